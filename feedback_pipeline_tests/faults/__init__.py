"""Faults that must never corrupt state: each test on real processes."""
