"""Engines are configuration: stage code asks here for Spark or Ray, never hard-codes a master or address."""
