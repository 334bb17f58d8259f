"""IMAP4rev1 (RFC 3501) and extensions: the pure protocol layer (parser, responses, sequence
sets) apart from the session that executes commands against the store."""
