"""The tamper-evident audit log: hash-chained events appended in the transaction of the change they record."""
