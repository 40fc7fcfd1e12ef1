"""Re-ranking with a multimodal model, against fake OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from cvgtext.rerank import Judged, reorder
from cvgtext.rerank.lmm import LMMReranker, parse_choice, parse_confidence
from cvgtext.utils.chat import encode_image
from cvgtext.utils.errors import ConfigError
from helpers.chat_server import ChatServer
from helpers.city import CITY, annotation_path, image_path, repaint_tiles
from helpers.runs import compose_config, locate_overrides, logged_metrics
from helpers.web import free_port

PROMPTS = {"prompt": 'Where? "{description}" {view}', "pair_prompt": 'Image A and image B: "{description}" {view}'}


def judged(*values):
    return [Judged(value, failures=Counter() if value is not None else Counter(["timeout"])) for value in values]


def test_reorder_adds_the_normalised_values_and_keeps_failed_candidates_in_place():
    scores = [0.50, 0.48, 0.47, 0.40]
    # values 0.2 : 0.8 over the two judged -> shares 0.2, 0.8; weight 0.1 -> 0.52 and 0.55
    result = reorder(scores, judged(0.2, None, 0.8, None), weight=0.1)
    assert result.reranked and result.order == [2, 1, 0, 3]
    assert result.scores[0] == pytest.approx(0.52) and result.scores[2] == pytest.approx(0.55)
    assert result.scores[1] is None
    # a small weight changes nothing; equal combined scores keep the old order
    assert reorder(scores, judged(0.2, 0.2, 0.8, 0.2), weight=0.01).order == [0, 1, 2, 3]
    assert reorder([0.5, 0.5], judged(0.5, 0.5), weight=1).order == [0, 1]
    kept = reorder(scores, judged(None, 1.0, None, None), weight=10)
    assert kept.order == [0, 1, 2, 3] and not kept.reranked and "timeout" in kept.status
    assert reorder(scores, judged(0, 0, 0, 0), weight=10).order == [0, 1, 2, 3]


def test_the_values_are_normalised_by_their_sum_whatever_their_scale():
    scores = [0.50, 0.47, 0.30]
    # 0.1 : 0.3 : 0.2 -> shares 1/6, 1/2, 1/3 of the weight 0.12: 0.52, 0.53, 0.34
    result = reorder(scores, judged(0.1, 0.3, 0.2), weight=0.12)
    assert result.scores == pytest.approx([0.52, 0.53, 0.34])
    assert result.order == [1, 0, 2]  # unnormalised values (0.512, 0.506) would keep 0 first
    # Only the ratios of the values matter: the same judgements at a tenth of the scale re-rank alike.
    tenth = reorder(scores, judged(0.01, 0.03, 0.02), weight=0.12)
    assert tenth.order == result.order and tenth.scores == pytest.approx(result.scores)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"reason": "trees", "confidence": 0.75}', (0.75, "trees", None)),
        ('Sure!\n```json\n{"reason": "a park", "confidence": 1}\n```', (1.0, "a park", None)),
        ('{"confidence": 0}', (0.0, "", None)),
        ("It is the second one.", (None, "", "invalid_json")),
        ('{"reason": "x", "confidence": "high"}', (None, "x", "invalid_json")),
        ('{"reason": "x", "confidence": true}', (None, "x", "invalid_json")),
        ('{"reason": "x", "confidence": 1.5}', (None, "x", "out_of_range")),
        ('{"reason": "x", "confidence": -0.1}', (None, "x", "out_of_range")),
        ('["confidence", 1]', (None, "", "invalid_json")),
    ],
)
def test_pointwise_replies_are_read_strictly(reply, expected):
    assert parse_confidence(reply) == expected


def test_pairwise_replies_name_a_or_b():
    assert parse_choice('{"reason": "the bridge", "better": "b"}') == ("B", "the bridge", None)
    assert parse_choice('{"reason": "both", "better": "both"}') == (None, "both", "out_of_range")
    assert parse_choice("A") == (None, "", "invalid_json")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("url", "127.0.0.1:8000", "reranker.url='127.0.0.1:8000': expected the http:// or https://"),
        ("mode", "listwise", "reranker.mode='listwise': expected pointwise or pairwise"),
        ("top_k", 1, "reranker.top_k=1: expected a number of candidates from 2 to 10"),
        ("top_k", 11, "reranker.top_k=11"),
        ("weight", -1, "reranker.weight=-1: expected a number >= 0"),
        ("timeout_s", 0, "reranker.timeout_s=0: expected a positive number"),
        ("concurrency", 0, "reranker.concurrency=0: expected a whole number >= 1"),
        ("max_queries", 0, "reranker.max_queries=0: expected a positive number of queries, or null"),
        ("api_key_env", "sk-proj-abc123", "reranker.api_key_env: expected the NAME of an environment variable"),
    ],
)
def test_bad_settings_are_named(key, value, message):
    import re

    settings = {"url": "http://127.0.0.1:1/v1", "model": "m", **PROMPTS, key: value}
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        LMMReranker(**settings)
    assert "sk-proj" not in message


def small_reranking(small_split, url, tmp_path, **settings):
    """The small split's whole-gallery ranking re-ranked over its 3 tiles by the server at ``url``."""
    from cvgtext.rerank.compare import rerank_split
    from cvgtext.retrieval.split import evaluate_split

    embedded, dataset = small_split
    evaluation = evaluate_split(embedded, dataset, nearest=None)
    settings = {
        "top_k": 3,
        "weight": 3.0,
        "timeout_s": 5,
        "retries": 0,
        "backoff_s": 0,
        "concurrency": 2,
        "cache_dir": tmp_path / "cache",
        **PROMPTS,
        **settings,
    }
    reranker = LMMReranker(url=url, model="fake", **settings)
    return evaluation, rerank_split(evaluation, dataset, reranker, reranker.weight, reranker.max_queries)


def small_truth(small_split, size=512):
    """Each caption of the small split and the data URL of its true tile, as the re-ranker sends it."""
    from cvgtext.data.dataset import load_image

    _, dataset = small_split
    return {pair.caption: encode_image(load_image(pair.image_path), size) for pair in dataset.pairs}


@pytest.mark.parametrize("mode", ["pointwise", "pairwise"])
def test_an_oracle_puts_every_true_tile_of_the_top_k_first(small_split, tmp_path, mode):
    # Two of the four captions rank their true tile second: the oracle moves both to first.
    with ChatServer("oracle", small_truth(small_split)) as server:
        evaluation, reranking = small_reranking(small_split, server.url, tmp_path, mode=mode)
    metrics = reranking.metrics
    assert metrics["without"]["all"]["R@1"] == 50 and metrics["with"]["all"]["R@1"] == 100
    assert metrics["reranked"] == metrics["queries"] == 4 and metrics["failed_requests"] == {}
    assert metrics["difference"]["R@1"]["difference"] == 50
    assert reranking.after.true_rank.tolist() == [1, 1, 1, 1]
    assert metrics["with"]["all"]["mean_error_km"] == 0
    assert len(server.requests) == 4 * (3 if mode == "pointwise" else 3)  # 3 tiles, or 3 pairs of them
    body = server.requests[0]["body"]
    assert body["model"] == "fake" and body["response_format"] == {"type": "json_object"}
    assert "satellite image" in body["messages"][0]["content"][0]["text"]
    # the tiles go as images, never by their file names (which hold their coordinates)
    assert all("153.02" not in json.dumps(request["body"]) for request in server.requests)
    best = reranking.results[2]  # A's second caption: B was first, A is now
    assert best.order[0] == 1 and best.judged[1].reason


@pytest.mark.parametrize("behaviour", ["garbage", "out_of_range", "error", "closed"])
def test_failed_replies_leave_the_dual_encoders_order_and_are_counted(small_split, tmp_path, behaviour):
    if behaviour == "closed":
        _, reranking = small_reranking(
            small_split, f"http://127.0.0.1:{free_port()}/v1", tmp_path, retries=2, backoff_s=0.01
        )
    else:
        with ChatServer(behaviour) as server:
            _, reranking = small_reranking(small_split, server.url, tmp_path)
    metrics = reranking.metrics
    assert reranking.after.indices.tolist() == reranking.before.indices.tolist()
    assert metrics["with"] == metrics["without"] and metrics["reranked"] == 0
    kind = {"garbage": "invalid_json", "out_of_range": "out_of_range", "error": "http_error", "closed": "unreachable"}[
        behaviour
    ]
    assert metrics["failed_requests"] == {kind: 12}
    assert metrics["queries_by_status"] == {f"fewer than two candidates judged ({kind})": 4}


def test_a_slow_server_times_out_and_a_closed_port_is_given_up_at_once(small_split, tmp_path):
    with ChatServer("slow", delay_s=1.0) as server:
        _, reranking = small_reranking(small_split, server.url, tmp_path, timeout_s=0.2, concurrency=12)
    assert reranking.metrics["failed_requests"] == {"timeout": 12} and reranking.metrics["reranked"] == 0
    _, reranking = small_reranking(
        small_split, f"http://127.0.0.1:{free_port()}/v1", tmp_path, retries=3, backoff_s=0.05, concurrency=1
    )
    assert reranking.metrics["failed_requests"] == {"unreachable": 12}  # one request retried, the rest not sent


def test_replies_are_cached_and_a_rerun_asks_nothing(small_split, tmp_path):
    with ChatServer("random", seed=3) as server:
        _, first = small_reranking(small_split, server.url, tmp_path)
        asked = len(server.requests)
        _, again = small_reranking(small_split, server.url, tmp_path)
        assert asked == 12 and len(server.requests) == asked
        _, other = small_reranking(small_split, server.url, tmp_path, prompt=PROMPTS["prompt"] + " Be brief.")
        assert len(server.requests) == 2 * asked  # another prompt is another question
    assert [r.order for r in again.results] == [r.order for r in first.results]


def test_the_bootstrap_interval_holds_the_difference():
    import torch

    from cvgtext.retrieval.bootstrap import paired_bootstrap
    from cvgtext.retrieval.ranking import Ranking

    def ranking(ranks):
        ranks = torch.tensor(ranks)
        return Ranking(
            torch.zeros(len(ranks), 1, dtype=torch.long),
            torch.zeros(len(ranks), 1),
            ranks,
            torch.where(ranks == 1, 0.0, 1.0).double(),
            None,
        )

    same = paired_bootstrap(ranking([1, 2, 3] * 10), ranking([1, 2, 3] * 10))
    assert same["R@1"] == {"difference": 0, "low": 0, "high": 0}
    # 20 queries gain the first place, 5 lose it: +37.5 points, standard error about 11
    better = paired_bootstrap(ranking([2] * 20 + [1] * 20), ranking([1] * 35 + [2] * 5))
    assert better["R@1"]["difference"] == pytest.approx(37.5)
    assert 10 < better["R@1"]["low"] < 37.5 < better["R@1"]["high"] < 65
    assert better["mean_error_km"]["difference"] == pytest.approx(-0.375)


def unique_captions(release_dir):
    """Give every caption of the tiny city a text of its own, so a description names one tile."""
    for version in (CITY, f"{CITY}-photos"):
        for split in ("train", "test"):
            path = annotation_path(release_dir, version, split)
            content = json.loads(path.read_text())
            path.write_text(
                json.dumps({name: f"{text} Place {version}-{n}." for n, (name, text) in enumerate(content.items())})
            )


@pytest.mark.slow
def test_eval_reports_the_oracles_reranking_beside_the_dual_encoder(release_dir, tmp_path, capsys, monkeypatch):
    from cvgtext.commands.evaluate import evaluate
    from cvgtext.data.dataset import load_image
    from helpers.models import tiny_checkpoint
    from helpers.runs import run_cli

    repaint_tiles(release_dir)
    unique_captions(release_dir)
    truth = {}
    for version in (CITY, f"{CITY}-photos"):
        for name, text in json.loads(annotation_path(release_dir, version, "test").read_text()).items():
            truth[text] = encode_image(load_image(image_path(release_dir, name, version)), 512)
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("CVGTEXT_TEST_API_KEY", secret)
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=4)
    with ChatServer("oracle", truth) as server:
        overrides = [
            f"paths.cache_dir={tmp_path}/cache",
            *locate_overrides(
                release_dir,
                f"ckpt_path={checkpoint}",
                "reranker=lmm",
                f"reranker.url={server.url}",
                "reranker.api_key_env=CVGTEXT_TEST_API_KEY",
                "reranker.weight=3",
                "reranker.max_queries=null",
                "reranker.model=fake-vl",
            ),
        ]
        metrics = evaluate(compose_config("eval", [*overrides, "logger=csv"], tmp_path))
        asked = len(server.requests)
        assert asked == 9 * 5 and server.requests[0]["headers"]["Authorization"] == f"Bearer {secret}"
        # the command itself, as a user runs it: every reply now comes from the cache
        again = run_cli("eval.py", *overrides, f"hydra.run.dir={tmp_path}/again", env={"CVGTEXT_TEST_API_KEY": secret})
        assert again.returncode == 0, again.stderr[-2000:]
        assert len(server.requests) == asked
    assert "re-ranking (pointwise, top 5, weight 3): 9 of 9 queries re-ranked" in again.stdout
    assert (tmp_path / "again" / ".hydra" / "overrides.yaml").is_file()
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())["reranking"]
    # With weight 3 (more than the widest spread of cosine similarities, 2), the oracle's
    # choice decides: R@1 after re-ranking is the share of queries whose true tile is in the top 5.
    assert report["with"]["all"]["R@1"] == report["without"]["all"]["R@5"] > report["without"]["all"]["R@1"]
    assert metrics["test/reranked/R@1"] == report["with"]["all"]["R@1"]
    assert logged_metrics(tmp_path / "run")["test/reranked/R@1"] == pytest.approx(report["with"]["all"]["R@1"])
    assert report["model"] == "fake-vl" and "{description}" in report["prompt"] and report["queries"] == 9
    assert "re-ranking (pointwise, top 5, weight 3): 9 of 9 queries re-ranked" in printed
    with open(tmp_path / "run" / "predictions.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        assert row["reranking"] == "re-ranked"
        if row["reranked_true_rank"] == "1":
            assert row["reranked_top1"] == row["query"] and row["reranked_top1_reason"] == "the place described"
    # the key is in no file the runs wrote (configs, logs, reports, the reply cache)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "config.yaml" or path.suffix == ".json" for path in written)
    assert not [path for path in written if secret.encode() in path.read_bytes()]


def test_locate_reranks_and_shows_the_reasons(release_dir, tmp_path, capsys):
    from cvgtext.commands.app import results_html
    from helpers.models import tiny_checkpoint
    from helpers.runs import run_locate

    repaint_tiles(release_dir)
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=5)
    query = "A street with 2 trees and a red roof."
    plain = run_locate(tmp_path / "plain", release_dir, f"ckpt_path={checkpoint}", f"query={query}", "draw=false")
    # the oracle takes the dual encoder's third tile for the truth
    third = plain[0].candidates[2]
    from cvgtext.data.dataset import load_image

    with ChatServer("oracle", {query: encode_image(load_image(third.path), 512)}) as server:
        [location] = run_locate(
            tmp_path,
            release_dir,
            f"ckpt_path={checkpoint}",
            f"query={query}",
            "draw=false",
            "reranker=lmm",
            f"reranker.url={server.url}",
            "reranker.weight=3",
        )
    assert location.reranking == "re-ranked" and location.candidates[0].file == third.file
    assert [c.dual_rank for c in location.candidates] == [3, 1, 2, 4, 5]
    assert location.candidates[0].distance_m == 0 and location.candidates[0].reason == "the place described"
    printed = capsys.readouterr().out
    assert f"query 1: {query} (re-ranked)" in printed and "1: the place described" in printed
    content = json.loads((tmp_path / "run" / "locations.json").read_text())
    assert content[0]["reranking"] == "re-ranked"
    best = content[0]["candidates"][0]
    assert (best["dual_encoder_rank"], best["value"], best["reason"]) == (3, 1.0, "the place described")
    table = results_html(location)
    assert "re-ranker reason" in table and "the place described" in table


def test_the_cli_names_a_bad_reranker_setting_in_one_line(release_dir, tmp_path):
    from helpers.runs import run_cli

    result = run_cli(
        "eval.py",
        *locate_overrides(release_dir),
        f"hydra.run.dir={tmp_path}/run",
        "reranker=lmm",
        "reranker.mode=listwise",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1:]
    assert last == ["error: reranker.mode='listwise': expected pointwise or pairwise"]


def test_pairwise_requests_carry_each_tile_and_its_relevance_overlay(release_dir, tmp_path):
    from helpers.models import tiny_checkpoint
    from helpers.runs import run_locate

    repaint_tiles(release_dir)  # no two tiles alike: identical questions are asked once
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=6)
    with ChatServer("random", seed=1) as server:
        [location] = run_locate(
            tmp_path,
            release_dir,
            f"ckpt_path={checkpoint}",
            "query=a red roof",
            "draw=false",
            "top_k=3",
            "reranker=lmm",
            f"reranker.url={server.url}",
            "reranker.mode=pairwise",
            "reranker.overlay=true",
        )
    assert len(server.requests) == 3  # the pairs of 3 candidates
    for request in server.requests:
        content = request["body"]["messages"][0]["content"]
        assert [part["type"] for part in content] == ["text"] + ["image_url"] * 4
        assert "shaded where a retrieval model found" in content[0]["text"]
        tile, overlay = (part["image_url"]["url"] for part in content[1:3])
        assert tile != overlay and tile.startswith("data:image/jpeg;base64,")
    assert location.reranking == "re-ranked" and sorted(c.dual_rank for c in location.candidates) == [1, 2, 3]


def test_the_same_question_is_asked_once(small_split, tmp_path):
    from cvgtext.rerank import Query

    _, dataset = small_split
    tiles = [pair.image_path for pair in dataset.pairs[:3]]
    with ChatServer("random", seed=2) as server:
        reranker = LMMReranker(url=server.url, model="fake", cache_dir=None, **PROMPTS)
        first, second = reranker.judge([Query("a red roof", tiles, [0.3, 0.2, 0.1])] * 2)
    assert len(server.requests) == 3
    assert [j.value for j in first] == [j.value for j in second]


def test_a_local_server_is_reached_past_a_proxy_of_the_environment(small_split, tmp_path, monkeypatch):
    # nothing listens at the proxy: a request sent there would fail
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with ChatServer("oracle", small_truth(small_split)) as server:
        _, reranking = small_reranking(small_split, server.url, tmp_path)
    assert reranking.metrics["reranked"] == 4 and len(server.requests) == 12
