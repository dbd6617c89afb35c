"""nmkit.report"""
