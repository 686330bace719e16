"""The only package that knows about parallelism: process groups, wrapping, collectives."""
