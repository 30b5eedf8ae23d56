"""Development and test stand-ins for the systems kabanero-otc talks to (not in the production image)."""
