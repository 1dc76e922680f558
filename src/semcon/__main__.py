from semcon.cli import main

main()
