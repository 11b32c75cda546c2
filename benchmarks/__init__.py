"""Benchmarks whose committed outputs live in benchmarks/results/ (each records machine, versions, command)."""
