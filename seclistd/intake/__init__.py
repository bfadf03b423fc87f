"""The three intakes (IMAP, SMTP/LMTP listener, `ingest`) and the store they share."""
