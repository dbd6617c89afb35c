"""nmkit.serve"""
