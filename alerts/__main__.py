from alerts.worker import main

main()
