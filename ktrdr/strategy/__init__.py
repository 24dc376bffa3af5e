"""Strategy files (rule-based and neuro-fuzzy v3.0), their validation and their signals."""

from ktrdr.strategy.errors import StrategyError
from ktrdr.strategy.loader import load_strategy, packaged_strategies, parse_strategy, with_parameters
from ktrdr.strategy.schema import NeuroFuzzyStrategy, RuleStrategy, Strategy
from ktrdr.strategy.signals import Signals, compute_indicators, generate_signals, target_positions

__all__ = ["NeuroFuzzyStrategy", "RuleStrategy", "Signals", "Strategy", "StrategyError", "compute_indicators",
           "generate_signals", "load_strategy", "packaged_strategies", "parse_strategy", "target_positions",
           "with_parameters"]
