"""edgerec.sdk.models"""
