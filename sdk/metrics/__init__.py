"""edgerec.sdk.metrics"""
