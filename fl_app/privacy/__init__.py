"""Differential privacy at the hospital: settings, the RDP accountant and the hospital's ledger,
DP-SGD (Opacus), the server's summary of what hospitals report, and the leakage audit."""
