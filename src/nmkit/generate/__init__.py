"""nmkit.generate"""
