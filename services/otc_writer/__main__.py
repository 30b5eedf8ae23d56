from services.otc_writer.app import main

main()
