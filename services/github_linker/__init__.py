"""github-linker: Kabanero service lifecycle + instance repositories -> GitHub tool commands for otc-writer."""
