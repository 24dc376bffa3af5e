"""Vectorised technical indicators and the registry that strategies name them through."""

from ktrdr.indicators.momentum import roc, rsi, stochastic
from ktrdr.indicators.registry import compute, get, names, parameters, register, validate_spec
from ktrdr.indicators.trend import ema, macd, sma
from ktrdr.indicators.volatility import atr, bollinger, true_range

for _name, _fn in (("sma", sma), ("ema", ema), ("rsi", rsi), ("macd", macd), ("bollinger", bollinger),
                   ("bbands", bollinger), ("atr", atr), ("stochastic", stochastic), ("stoch", stochastic),
                   ("roc", roc)):
    register(_name, _fn)

__all__ = ["atr", "bollinger", "compute", "ema", "get", "macd", "names", "parameters", "register", "roc", "rsi",
           "sma", "stochastic", "true_range", "validate_spec"]
