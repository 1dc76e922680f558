"""The coordinator of a method: semantic consensus (the server, which applies a rule of ``semcon.consensus``) and
the baselines' server side (parameter averaging, local)."""
