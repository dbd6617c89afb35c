"""nmkit.quality"""
