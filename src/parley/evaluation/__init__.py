"""Offline evaluation: scripted callers played over the real socket against a running
server, scored on what was heard, what was answered, how fast, and what was done."""

from parley.evaluation.report import summary
from parley.evaluation.runner import play_scenarios
from parley.evaluation.scenarios import Scenario, ScenarioError, ScenarioTurn, load_scenarios

__all__ = [
    "Scenario",
    "ScenarioError",
    "ScenarioTurn",
    "load_scenarios",
    "play_scenarios",
    "summary",
]
