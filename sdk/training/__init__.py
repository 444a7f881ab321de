"""edgerec.sdk.training"""
