"""edgerec.converters.passes"""
