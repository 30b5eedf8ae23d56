from services.kabanero_watcher.app import main

if __name__ == "__main__":
    main()
