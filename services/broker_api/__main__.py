from services.broker_api.app import main

main()
