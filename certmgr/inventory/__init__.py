"""Inventory and enrollment of phones (D9): reports from the phones, operator approval."""
