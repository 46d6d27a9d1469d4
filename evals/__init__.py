"""Candidate vs incumbent: decide, with statistics, whether a new adapter beats the one serving.

Talks to models only through vLLM's OpenAI-compatible HTTP API, so it evaluates exactly what
would be served. Never imports `service` (checked by import-linter).

    from evals import EvalConfig, RulesConfig, run
    report = run(EvalConfig(vllm_url="http://127.0.0.1:8000", candidate="p@v2", incumbent="p@v1",
                            holdout="runs/7/holdout.parquet"))
    report.decision.promote, report.to_markdown(), report.to_json()

Or from a shell: ``python -m evals --help``.
"""

from evals.calibration import AgreementCalibration, AucCalibration, CalibrationConfig
from evals.config import (
    DEFAULT_JUDGE_PROMPT,
    EvalConfig,
    FeedbackGateConfig,
    GenerationConfig,
    GoldenConfig,
    JudgeConfig,
    Role,
    RulesConfig,
    RuleSpec,
)
from evals.decision import Decision, Reason, decide
from evals.errors import EvalError, EvalInputError, JudgeError, ScorerError, ServerError
from evals.evalset import EvalExample, load_golden, load_holdout
from evals.feedback import FeedbackExample, HeldOutRating, group_feedback, read_holdout_ratings
from evals.feedback_gate import build_feedback_scorers
from evals.report import Report, ScorerResult, Timings
from evals.reward_model import RewardItem, RewardModel, ScorerProcess, TrainerRewardModel
from evals.runner import arun, run
from evals.scorers.agreement import PreferenceAgreement
from evals.scorers.base import AnswerPair, ExampleScore, PointwiseScorer, Scorer
from evals.scorers.golden import GoldenScorer
from evals.scorers.judge import PairwiseJudge, parse_verdict
from evals.scorers.learned import LearnedJudge
from evals.scorers.preference import UserPreference
from evals.scorers.rules import RuleScorer
from evals.statistics import PairedStats, paired_bootstrap

__all__ = [
    "DEFAULT_JUDGE_PROMPT",
    "AgreementCalibration",
    "AnswerPair",
    "AucCalibration",
    "CalibrationConfig",
    "Decision",
    "EvalConfig",
    "EvalError",
    "EvalExample",
    "EvalInputError",
    "ExampleScore",
    "FeedbackExample",
    "FeedbackGateConfig",
    "GenerationConfig",
    "GoldenConfig",
    "GoldenScorer",
    "HeldOutRating",
    "JudgeConfig",
    "JudgeError",
    "LearnedJudge",
    "PairedStats",
    "PairwiseJudge",
    "PointwiseScorer",
    "PreferenceAgreement",
    "Reason",
    "Report",
    "RewardItem",
    "RewardModel",
    "Role",
    "RuleScorer",
    "RuleSpec",
    "RulesConfig",
    "Scorer",
    "ScorerError",
    "ScorerProcess",
    "ScorerResult",
    "ServerError",
    "Timings",
    "TrainerRewardModel",
    "UserPreference",
    "arun",
    "build_feedback_scorers",
    "decide",
    "group_feedback",
    "load_golden",
    "load_holdout",
    "paired_bootstrap",
    "parse_verdict",
    "read_holdout_ratings",
    "run",
]
