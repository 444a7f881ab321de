"""edgerec.sdk.data"""
