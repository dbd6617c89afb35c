"""nmkit.metrics"""
