"""PKI: keys, the two-level CA, leaf certificates, PKCS#12 packaging and key storage.

Pure except the CA store, which reads and writes the data directory.
"""
