"""Views built from the event log: the stream projector, the balance fold, rebuild and verify."""

from .balances import BalanceChange, fold_by_account
from .projector import ProjectionReport, Projector
from .store import Balance, BalanceStore

__all__ = ["Balance", "BalanceChange", "BalanceStore", "ProjectionReport", "Projector", "fold_by_account"]
