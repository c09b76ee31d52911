"""Optimizely datafiles (format 4) that exercise what the proxy must decide identically to
Optimizely's SDK: experiments with partial traffic and forced users, a paused experiment, a
mutual-exclusion group, delivery rules with partial traffic and "Everyone Else", typed and
legacy audiences with every match type, nested and/or/not audience conditions."""

from __future__ import annotations

import copy
import json


def _var(id_: str, key: str, type_: str, default: str) -> dict:
    return {"id": id_, "key": key, "type": type_, "defaultValue": default}


VARIABLES = [
    _var("v1", "model_id", "string", "base-model"),
    _var("v2", "provider", "string", "mock"),
    _var("v3", "temperature", "double", "0.5"),
    _var("v4", "token_budget", "integer", "500"),
    _var("v5", "retrieval_profile", "string", "none"),
    _var("v6", "show_sources", "boolean", "false"),
    # A JSON variable as current datafiles write it: a string with subType json.
    {**_var("v7", "layout", "string", '{"columns": 1}'), "subType": "json"},
    _var("v8", "system_prompt_variant", "string", "short"),
]


def variation(id_: str, key: str, enabled: bool, **values: str) -> dict:
    ids = {v["key"]: v["id"] for v in VARIABLES}
    return {
        "id": id_,
        "key": key,
        "featureEnabled": enabled,
        "variables": [{"id": ids[k], "value": v} for k, v in values.items()],
    }


def experiment(
    id_: str,
    key: str,
    variations: list[dict],
    allocation: list[tuple[str, int]],
    *,
    status: str = "Running",
    audience_ids: list[str] | None = None,
    audience_conditions: list | str | None = None,
    forced: dict[str, str] | None = None,
    layer: str = "layer",
) -> dict:
    e = {
        "id": id_,
        "key": key,
        "status": status,
        "layerId": layer,
        "variations": variations,
        "trafficAllocation": [{"entityId": v, "endOfRange": end} for v, end in allocation],
        "audienceIds": audience_ids or [],
        "forcedVariations": forced or {},
    }
    if audience_conditions is not None:
        e["audienceConditions"] = audience_conditions
    return e


def leaf(name: str, match: str | None, value) -> dict:
    c = {"name": name, "type": "custom_attribute", "value": value}
    if match is not None:
        c["match"] = match
    return c


TYPED = {
    "a_plan_pro": leaf("plan", "exact", "pro"),
    "a_age_30": leaf("age", "exact", 30),
    "a_beta": leaf("beta", "exact", True),
    "a_email_exists": leaf("email", "exists", None),
    "a_acme": leaf("email", "substring", "@acme.example"),
    "a_age_gt40": leaf("age", "gt", 40),
    "a_age_ge18": leaf("age", "ge", 18),
    "a_age_lt25": leaf("age", "lt", 25),
    "a_age_le65": leaf("age", "le", 65.5),
    "a_v_eq2": leaf("app_version", "semver_eq", "2.0.0"),
    "a_v_lt15": leaf("app_version", "semver_lt", "1.5"),
    "a_v_le21": leaf("app_version", "semver_le", "2.1"),
    "a_v_gt31b": leaf("app_version", "semver_gt", "3.1.0-beta"),
    "a_v_ge21": leaf("app_version", "semver_ge", "2.1"),
}


def audiences() -> tuple[list[dict], list[dict]]:
    typed = [
        {"id": aid, "name": aid, "conditions": ["and", ["or", ["or", cond]]]}
        for aid, cond in TYPED.items()
    ]
    # A typed audience with its own and/or/not tree.
    typed.append(
        {
            "id": "a_mixed",
            "name": "a_mixed",
            "conditions": [
                "and",
                ["or", leaf("plan", "exact", "team"), leaf("plan", None, "pro")],
                ["not", leaf("country", "exact", "de")],
            ],
        }
    )
    legacy = [
        # A legacy audience: conditions as a JSON string, match type left out (exact).
        {
            "id": "a_fr",
            "name": "a_fr",
            "conditions": json.dumps(["and", ["or", ["or", leaf("country", None, "fr")]]]),
        }
    ] + [
        {"id": a["id"], "name": "Optimizely-Generated Audience for Backwards Compatibility", "conditions": '["or", {"match": "exact", "name": "$opt_dummy_attribute", "type": "custom_attribute", "value": "$opt_dummy_value"}]'}
        for a in typed
    ]
    return legacy, typed


def datafile(revision: str = "1", *, variant: int = 1) -> dict:
    """The test project. `variant` 2 moves traffic and changes a value (a new revision)."""
    on = variation("4001", "on", True, model_id="large-2", temperature="0.2", show_sources="true", layout='{"columns": 2}')
    off = variation("4002", "off", False)
    a_ctl = variation("4011", "a_control", True, model_id="small-1", retrieval_profile="keyword-v1")
    a_trt = variation(
        "4012",
        "a_treatment",
        True,
        model_id="large-2" if variant == 1 else "large-3",
        token_budget="900",
        retrieval_profile="semantic-v2",
        show_sources="true",
    )
    a_dark = variation("4013", "a_dark", False, model_id="ignored-when-disabled")

    exp_a1 = experiment(
        "9001",
        "assistant_ab",
        [a_ctl, a_trt, a_dark],
        [("4011", 3000), ("4012", 6000 if variant == 1 else 7000), ("", 6500 if variant == 1 else 7500), ("4013", 8000)],
        audience_conditions=["or", ["and", "a_age_ge18", ["not", "a_age_gt40"]], "a_plan_pro", "a_mixed"],
        forced={"forced-user-1": "a_treatment", "forced-user-2": "a_dark"},
    )
    exp_a_paused = experiment(
        "9002",
        "assistant_paused",
        [a_trt],
        [("4012", 10000)],
        status="Paused",
        forced={"forced-user-3": "a_treatment"},
    )
    rollout_a = {
        "id": "r_assistant",
        "experiments": [
            experiment("8001", "semver_rule", [on, off], [("4001", 5000)], audience_ids=["a_v_ge21"], audience_conditions=None),
            experiment("8002", "acme_rule", [on], [("4001", 10000)], audience_conditions=["and", "a_acme", ["or", "a_v_lt15", "a_v_eq2", "a_v_gt31b", "a_v_le21"]]),
            experiment("8003", "fr_rule", [on], [("4001", 2500)], audience_ids=["a_fr", "a_beta", "a_age_30"]),
            experiment("8004", "everyone_else_assistant", [on, off], [("4001", 8000)]),
        ],
    }

    b_x = variation("4021", "b_x", True, model_id="sum-x")
    b_y = variation("4022", "b_y", True, model_id="sum-y", layout='{"columns": 3}')
    w_p = variation("4031", "w_plain", True, model_id="write-p")
    w_q = variation("4032", "w_quirky", True, model_id="write-q", temperature="1.1")
    exp_b = experiment("7001", "summarizer_exp", [b_x, b_y], [("4021", 5000), ("4022", 10000)], audience_ids=["a_email_exists"], layer="lg")
    exp_w = experiment("7002", "writer_exp", [w_p, w_q], [("4031", 5000), ("4032", 10000)], audience_conditions=["or", "a_age_lt25", "a_age_le65", "a_missing_audience"], layer="lg")
    group = {
        "id": "6001",
        "policy": "random",
        "experiments": [exp_b, exp_w],
        "trafficAllocation": [
            {"entityId": "7001", "endOfRange": 4000},
            {"entityId": "7002", "endOfRange": 8000 if variant == 1 else 9000},
            {"entityId": "", "endOfRange": 10000},
        ],
    }
    rollout_b = {
        "id": "r_summarizer",
        "experiments": [
            experiment("8101", "everyone_else_summarizer", [on], [("4001", 10000)]),
        ],
    }

    legacy, typed = audiences()
    return {
        "version": "4",
        "revision": revision,
        "accountId": "1",
        "projectId": "2",
        "anonymizeIP": True,
        "botFiltering": False,
        "sendFlagDecisions": True,
        "attributes": [
            {"id": f"attr{i}", "key": k}
            for i, k in enumerate(["plan", "age", "beta", "email", "app_version", "country"])
        ],
        "events": [],
        "integrations": [],
        "audiences": legacy,
        "typedAudiences": typed,
        "experiments": [exp_a1, exp_a_paused],
        "groups": [group],
        "featureFlags": [
            {"id": "f1", "key": "assistant", "experimentIds": ["9001", "9002"], "rolloutId": "r_assistant", "variables": VARIABLES},
            {"id": "f2", "key": "summarizer", "experimentIds": ["7001"], "rolloutId": "r_summarizer", "variables": VARIABLES},
            {"id": "f3", "key": "writer", "experimentIds": ["7002"], "rolloutId": "", "variables": VARIABLES},
            # Not an AI configuration (no model_id variable): left out.
            {"id": "f4", "key": "banner", "experimentIds": [], "rolloutId": "", "variables": [_var("v9", "color", "string", "red")]},
        ],
        "rollouts": [rollout_a, rollout_b],
    }


def with_unknown_provider(base: dict, revision: str) -> dict:
    d = copy.deepcopy(base)
    d["revision"] = revision
    d["experiments"][0]["variations"][1]["variables"].append({"id": "v2", "value": "no-such-provider"})
    return d


def with_flag(base: dict, revision: str, key: str) -> dict:
    d = copy.deepcopy(base)
    d["revision"] = revision
    d["featureFlags"].append({"id": "f9", "key": key, "experimentIds": [], "rolloutId": "", "variables": VARIABLES})
    return d
