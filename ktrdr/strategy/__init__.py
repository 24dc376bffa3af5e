"""Strategy files (rule-based and neuro-fuzzy v3.0), their validation and their signals."""

from ktrdr.strategy.errors import StrategyError, UnknownStrategyError
from ktrdr.strategy.loader import (
    MAX_STRATEGY_BYTES,
    load_strategy,
    load_strategy_file,
    packaged_strategies,
    parse_strategy,
    strategies_dir,
    with_parameters,
)
from ktrdr.strategy.schema import NeuroFuzzyStrategy, RuleStrategy, Strategy
from ktrdr.strategy.signals import Signals, compute_indicators, generate_signals, target_positions

__all__ = ["MAX_STRATEGY_BYTES", "NeuroFuzzyStrategy", "RuleStrategy", "Signals", "Strategy", "StrategyError",
           "UnknownStrategyError", "compute_indicators", "generate_signals", "load_strategy", "load_strategy_file",
           "packaged_strategies", "parse_strategy", "strategies_dir", "target_positions", "with_parameters"]
