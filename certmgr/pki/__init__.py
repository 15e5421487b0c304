"""PKI: key generation, the two-level CA, leaf certificates, PKCS#12 packaging, key storage. No I/O here except
the CA store, which reads and writes the data directory."""
