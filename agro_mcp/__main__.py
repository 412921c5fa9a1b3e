from agro_mcp.cli import main

raise SystemExit(main())
