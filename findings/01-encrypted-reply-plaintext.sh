# plain report, then the reporter's reply encrypted to the project key (subject tag) -> alice (no fingerprint)
seclistd --config C ingest findings/rep1.eml; seclistd --config C ingest findings/rep2.eml; seclistd --config C run --once
grep -l hunter2 VAR/outgoing/new/*   # before the fix: the team forward carries the decrypted text in plaintext
