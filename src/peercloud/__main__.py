from peercloud.cli.app import main

main()
