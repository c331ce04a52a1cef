"""Benchmarks: a task record (`Task`), one `Benchmark` protocol with a registry (`get_benchmark`), and one
runner for every benchmark (`codetune.benchmarks.runner`)."""

from codetune.benchmarks.base import Benchmark, Program, PromptStyle, SandboxSpec, get_benchmark
from codetune.benchmarks.task import Task

__all__ = ["Benchmark", "Program", "PromptStyle", "SandboxSpec", "Task", "get_benchmark"]
