"""nmkit.phantoms"""
