from op4ksr.cli import main

main()
