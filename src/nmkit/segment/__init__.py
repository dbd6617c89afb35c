"""nmkit.segment"""
