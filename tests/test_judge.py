"""Judges of doubtful identity folders (mixture-of-experts cleaning, after Hybrid Generative Fusion, arXiv
2508.10672): the answer parser, the numbered grid, the three backends (a local server that speaks the
chat-completions protocol, a tiny random LLaVA built from a config, the offline consensus), and the build: only
doubtful folders are judged, verdicts are cached, a failed judge leaves the clustering's decision.

Photos: skimage's ``astronaut`` (Eileen Collins) and matplotlib's ``grace_hopper.jpg``."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from photo_fixtures import photo_variants
from sameid.backends.judge_base import (
    JUDGE_PROMPT,
    MAX_GRID_TILES,
    FolderToJudge,
    JudgeError,
    folder_grid,
    parse_verdict,
)
from sameid.dataset import cluster
from sameid.errors import MissingModelError, SameIdError

skimage_data = pytest.importorskip("skimage.data")


# --- the answer and the grid -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, different, reason", [
    ('{"different": [2, 5], "reason": "two are another woman"}', (1, 4), "two are another woman"),
    ('```json\n{"different": [], "reason": "all the same"}\n```', (), "all the same"),
    ('Here is my answer: {"different": ["3", 3]}', (2,), "no reason given"),
    ("none", (), "no reason given"),
    ("[1, 4]", (0, 3), "no reason given"),
    ("4", (3,), "no reason given"),
    ("2, 3.", (1, 2), "no reason given"),
])
def test_parse_verdict_reads_the_accepted_forms(text, different, reason):
    verdict = parse_verdict(text, 6)
    assert verdict.different == different and verdict.reason == reason


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("I think they might be the same person", "not a verdict"),
    ('{"different": [2, 5', "not a verdict"),
    ('{"different": [1}', "not valid JSON"),
    ('{"same": [1]}', "no \"different\""),
    ('{"different": "two"}', "not a list"),
    ('{"different": [true]}', "not a list"),
    ('{"different": [0, 7]}', "0, 7"),
    ("444", "444"),
])
def test_parse_verdict_refuses_nonsense(text, message):
    with pytest.raises(JudgeError, match=message):
        parse_verdict(text, 6)


def test_folder_grid_numbers_the_tiles():
    tiles = [Image.new("RGB", (40 + 10 * i, 60), (30 * i, 200, 90)) for i in range(5)]
    grid = folder_grid(tiles, tile=64)
    assert grid.size == (3 * 64, 2 * 64)  # ceil(sqrt 5) = 3 columns, 2 rows
    pixels = np.asarray(grid)
    assert (pixels[2:14, 2:14] == 255).all(axis=-1).any()  # the white box of number 1
    assert tuple(pixels[96, 160]) == (128, 128, 128)  # the sixth cell is empty
    with pytest.raises(JudgeError, match="fit one grid"):
        folder_grid([tiles[0]] * (MAX_GRID_TILES + 1))


# --- photos --------------------------------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def photos():
    astronaut = Image.fromarray(skimage_data.astronaut())
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    return {"astronaut": photo_variants(astronaut, 6, 1), "hopper": photo_variants(hopper, 6, 2)}


@pytest.fixture(scope="module")
def mixed_folder(photos, tmp_path_factory) -> FolderToJudge:
    """Four astronaut photos and two of Grace Hopper, with their dlib embeddings."""
    from sameid.backends.registry import create_backend

    root = tmp_path_factory.mktemp("mixed")
    embedder = create_backend("face_embedder", "dlib")
    images, vectors = [], []
    for name, image in [("a0", photos["astronaut"][0]), ("a1", photos["astronaut"][1]), ("h0", photos["hopper"][0]),
                        ("a2", photos["astronaut"][2]), ("a3", photos["astronaut"][3]), ("h1", photos["hopper"][1])]:
        path = root / f"{name}.jpg"
        image.save(path, quality=92)
        images.append(str(path))
        vectors.append(embedder.embed(image))
    embeddings = np.stack(vectors)
    return FolderToJudge(identity="astronaut", images=tuple(images), boxes=(None,) * 6, embeddings=embeddings,
                         proposal=np.array([True, True, False, True, True, False]), doubt="test")


# --- the offline consensus judge -----------------------------------------------------------------------------------


def test_consensus_judge_names_the_other_person(mixed_folder):
    from sameid.backends.registry import create_backend

    judge = create_backend("judge", "consensus")
    verdict = judge.judge(mixed_folder)
    assert verdict.different == (2, 5)  # h0 and h1
    assert "3 (" in verdict.reason and "6 (" in verdict.reason
    assert create_backend("judge", "consensus:0.5").judge(mixed_folder).different == ()
    with pytest.raises(JudgeError, match="cosine distance"):
        create_backend("judge", "consensus:far")


# --- a local server that speaks the chat-completions protocol -------------------------------------------------------


class ChatServer:
    """``POST /v1/chat/completions`` on 127.0.0.1 in a thread: records each request body and answers with the
    next of ``self.answers`` (a string: the message content; ``("sleep", s)``; ``("status", code)``)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                answer = server.answers.pop(0) if server.answers else "none"
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    answer = "none"
                if isinstance(answer, tuple) and answer[0] == "status":
                    self.send_response(answer[1])
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "overloaded"}}')
                    return
                payload = json.dumps({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                }).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def chat_server(monkeypatch):
    server = ChatServer()
    monkeypatch.setenv("SAMEID_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("SAMEID_JUDGE_API_KEY", "sk-local-test")
    yield server
    server.close()


def test_openai_judge_request_shape_grid_and_answer(chat_server, mixed_folder):
    from sameid.backends.judge_openai import OpenAIJudge

    chat_server.answers = ['{"different": [3, 6], "reason": "3 and 6 are an older woman in uniform"}']
    judge = OpenAIJudge("gpt-4o", timeout=10)
    verdict = judge.judge(mixed_folder)
    assert verdict.different == (2, 5) and verdict.reason == "3 and 6 are an older woman in uniform"
    [request] = chat_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer sk-local-test"
    body = request["body"]
    assert body["model"] == "gpt-4o" and body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    text, image = user["content"]
    assert text == {"type": "text", "text": JUDGE_PROMPT.format(n=6)}
    assert image["type"] == "image_url"
    url = image["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    grid = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert grid.format == "JPEG" and grid.size == (3 * 128, 2 * 128)  # six faces: 3 x 2 tiles
    assert judge.identity == f"openai:gpt-4o@{chat_server.url}"


def test_openai_judge_malformed_answer_timeout_and_server_error(chat_server, mixed_folder):
    from sameid.backends.judge_openai import OpenAIJudge

    judge = OpenAIJudge("gpt-4o", timeout=0.5, max_retries=0)
    chat_server.answers = ["They look similar, hard to say.", ('{"different": [9]}'), ("status", 500), ("sleep", 2.0)]
    with pytest.raises(JudgeError, match="not a verdict"):
        judge.judge(mixed_folder)
    with pytest.raises(JudgeError, match="grid has 1 to 6"):
        judge.judge(mixed_folder)
    with pytest.raises(JudgeError, match="InternalServerError"):
        judge.judge(mixed_folder)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="Timeout"):
        judge.judge(mixed_folder)
    assert time.monotonic() - start < 1.9  # the client gave up at its timeout, not when the server answered


def test_openai_judge_needs_a_key_or_a_local_server(monkeypatch):
    from sameid.backends.judge_openai import OpenAIJudge

    for name in ("SAMEID_JUDGE_BASE_URL", "OPENAI_BASE_URL", "SAMEID_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingModelError, match="SAMEID_JUDGE_API_KEY"):
        OpenAIJudge("gpt-4o")
    with pytest.raises(MissingModelError, match="needs a model"):
        OpenAIJudge("")
    monkeypatch.setenv("SAMEID_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")  # a local server needs no key
    assert OpenAIJudge("llava").identity == "openai:llava@http://127.0.0.1:9/v1"


# --- a local transformers vision-language model (a tiny random LLaVA) -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    """A random LLaVA (2-layer CLIP vision tower, 2-layer Llama, byte-level tokenizer, a chat template) whose
    language model's final norm is zero: every logit is equal and greedy decoding picks token 0, which is "4"."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("tiny-llava")
    (folder / "tokenizer").mkdir()
    chars = list(bytes_to_unicode().values())
    chars.remove("4")
    chars.insert(0, "4")
    vocab = {char: i for i, char in enumerate(chars)}
    vocab.update({"<|endoftext|>": len(vocab), "<image>": len(vocab) + 1})
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    special = dict.fromkeys(["bos_token", "eos_token", "pad_token", "unk_token"], "<|endoftext|>")
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", **special, "extra_special_tokens": {"image_token": "<image>"}}))
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", chat_template=template,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_transformers_judge_asks_a_local_vlm_with_the_grid(tiny_llava, mixed_folder, monkeypatch, torch_one_thread):
    from sameid.backends.judge_transformers import TransformersJudge

    monkeypatch.delenv("SAMEID_ALLOW_DOWNLOAD", raising=False)
    judge = TransformersJudge(tiny_llava, max_new_tokens=1)
    assert type(judge.answerer.model).__name__ == "LlavaForConditionalGeneration"
    prompt = judge.answerer._prompt(judge.prompt(mixed_folder))
    assert prompt.startswith("user: <image>\n") and JUDGE_PROMPT.format(n=6) in prompt  # the chat template
    verdict = judge.judge(mixed_folder)  # the model says "4": photo 4 is another person
    assert verdict.different == (3,)
    chatty = TransformersJudge(tiny_llava, max_new_tokens=3)  # "444": no such photo, so no verdict
    with pytest.raises(JudgeError, match="444"):
        chatty.judge(mixed_folder)
    with pytest.raises(MissingModelError):
        TransformersJudge(str(tiny_llava) + "-absent")


# --- doubtful folders ----------------------------------------------------------------------------------------------


def test_only_doubtful_folders_are_doubtful(mixed_folder, photos):
    from sameid.backends.registry import create_backend

    embedder = create_backend("face_embedder", "dlib")
    astronauts = np.stack([embedder.embed(image) for image in photos["astronaut"]])
    clear = astronauts  # one person: everything in the main cluster
    mixed = mixed_folder.embeddings  # 4 of 6 faces in the main cluster: 67% < 80%
    embeddings = np.concatenate([clear, mixed])
    codes = np.repeat([0, 1], [len(clear), len(mixed)])
    cleanings = cluster.clean_identity_folders(embeddings, codes, near_margin=cluster.JUDGE_MARGIN)
    doubts = cluster.doubtful_folders(cleanings)
    assert list(doubts) == [1] and "4 of 6 faces" in doubts[1]
    # an outlier within the margin of the main cluster is doubtful too: here the margin reaches the other person
    wide = cluster.clean_identity_folders(embeddings, codes, near_margin=0.3)
    near = cluster.doubtful_folders(wide, clear_fraction=0.5, margin=0.3)
    assert list(near) == [1] and "2 outlier(s)" in near[1]
    with pytest.raises(SameIdError, match="clear fraction"):
        cluster.doubtful_folders(cleanings, clear_fraction=0)


def test_batched_cleaning_equals_sklearn_dbscan_per_folder():
    from sklearn.cluster import DBSCAN

    rng = np.random.default_rng(3)
    parts, codes = [], []
    for code in range(40):
        size = int(rng.integers(1, 14))
        centre = rng.normal(size=32)
        members = centre / np.linalg.norm(centre) + rng.uniform(0.15, 0.4) * rng.normal(size=(size, 32)) / np.sqrt(32)
        planted = int(rng.integers(0, 3)) if size > 3 else 0  # faces of other people
        members[:planted] = rng.normal(size=(planted, 32))
        parts.append(members)
        codes += [code] * size
    embeddings, codes = np.concatenate(parts), np.array(codes)
    order = rng.permutation(len(codes))
    embeddings, codes = embeddings[order], codes[order]
    result = cluster.clean_identity_folders(embeddings, codes)
    grid = sorted(set(cluster.CLEAN_EPS_GRID) | {cluster.CLEAN_MAX_EPS})
    for code in range(40):
        rows = np.flatnonzero(codes == code)
        if len(rows) < 2:
            assert result.keep[rows].all()
            continue
        for step, eps in enumerate(grid):  # the per-folder script: sklearn DBSCAN up the grid
            labels = DBSCAN(eps=eps, min_samples=2, metric="cosine", algorithm="brute").fit_predict(embeddings[rows])
            sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1, dtype=int)
            if sizes.max() >= cluster.CLEAN_MAIN_FRACTION * len(rows) or step == len(grid) - 1:
                break
        assert result.labels[rows].tolist() == labels.tolist()
        assert result.eps[code] == pytest.approx(eps)
        single = cluster.clean_identity_folder(embeddings[rows])
        assert single.keep.tolist() == result.keep[rows].tolist()


# --- the build: only doubtful folders judged, verdicts cached, a failing judge leaves the clustering's decision -----


@pytest.fixture(scope="module")
def people(photos, tmp_path_factory):
    """``hopper/``: five photos of Grace Hopper (clear); ``mixed/``: four of the astronaut and two of Grace
    Hopper, all labelled one person (doubtful: the main cluster holds 4 of 6)."""
    root = tmp_path_factory.mktemp("people")
    (root / "hopper").mkdir()
    for i, image in enumerate(photos["hopper"][:5]):
        image.save(root / "hopper" / f"{i}.jpg", quality=92)
    (root / "mixed").mkdir()
    for i, image in enumerate(photos["astronaut"][:4]):
        image.save(root / "mixed" / f"a{i}.jpg", quality=92)
    for i, image in enumerate(photos["hopper"][4:6]):
        image.save(root / "mixed" / f"h{i}.jpg", quality=92)
    return root


def _build(people, out, cache, judge="openai:gpt-4o"):
    from sameid.dataset.pipeline import BuildConfig, build_dataset

    config = BuildConfig(source=str(people), out=str(out), workers=1, near_duplicate_bits=0, judge=judge,
                         judge_cache=str(cache))
    return build_dataset(config, progress=False)


def test_build_judges_only_doubtful_folders_and_caches_verdicts(people, chat_server, tmp_path):
    from sameid.backends import registry

    registry.create_backend.cache_clear()  # the judge reads the server's address from the environment
    # the folder is mixed/a0..a3, mixed/h0, mixed/h1: the judge says the astronaut photos are the other person
    chat_server.answers = ['{"different": [1, 2, 3, 4], "reason": "1-4 are a younger woman in a spacesuit"}']
    first = _build(people, tmp_path / "ds1", tmp_path / "cache")
    assert len(chat_server.requests) == 1  # only the doubtful folder
    grid = chat_server.requests[0]["body"]["messages"][1]["content"][0]["text"]
    assert grid == JUDGE_PROMPT.format(n=6)
    manifest, rejected = first.manifest.set_index("id"), first.rejected.set_index("id")
    assert sorted(manifest.index[manifest["identity"] == "mixed"]) == ["mixed/h0.jpg", "mixed/h1.jpg"]
    assert manifest.loc["mixed/h0.jpg", "judge_verdict"] == "same person (a clustering outlier)"
    assert pd.isna(manifest.loc["hopper/0.jpg", "judge_verdict"])  # a clear folder: the clustering decided
    assert (rejected.loc[[f"mixed/a{i}.jpg" for i in range(4)], "reason"] == "judge: not the same person").all()
    assert "spacesuit" in rejected.loc["mixed/a0.jpg", "detail"]
    judge_stats = first.stats["judge"]
    assert judge_stats["doubtful"] == 1 and judge_stats["judged"] == 1 and judge_stats["cached"] == 0
    assert judge_stats["images_rejected"] == 4 and judge_stats["images_rescued"] == 2
    card = (tmp_path / "ds1" / "README.md").read_text()
    assert "Judge of doubtful identity folders" in card and "| judged now | 1 |" in card
    assert json.loads((tmp_path / "ds1" / "stats.json").read_text())["judge"]["judged"] == 1

    second = _build(people, tmp_path / "ds2", tmp_path / "cache")  # same images, same judge: nothing asked
    assert len(chat_server.requests) == 1
    assert second.stats["judge"]["cached"] == 1 and second.stats["judge"]["judged"] == 0
    pd.testing.assert_frame_equal(second.manifest.drop(columns=["image", "mask"]),
                                  first.manifest.drop(columns=["image", "mask"]))


def test_build_with_a_failing_judge_keeps_the_clustering_decision(people, chat_server, tmp_path):
    from sameid.backends import registry

    registry.create_backend.cache_clear()
    chat_server.answers = ["I cannot tell who these people are."]
    result = _build(people, tmp_path / "ds", tmp_path / "cache")
    manifest, rejected = result.manifest.set_index("id"), result.rejected.set_index("id")
    # the clustering's decision: the four astronaut photos are the main cluster, Grace Hopper's two are outliers
    assert sorted(manifest.index[manifest["identity"] == "mixed"]) == [f"mixed/a{i}.jpg" for i in range(4)]
    assert manifest.loc["mixed/a0.jpg", "judge_verdict"] == "no verdict: the clustering decided"
    assert "not a verdict" in manifest.loc["mixed/a0.jpg", "judge_reason"]
    assert rejected.loc["mixed/h0.jpg", "reason"] == "identity outlier"
    assert "judge gave no verdict" in rejected.loc["mixed/h0.jpg", "detail"]
    assert result.stats["judge"]["failed"] == 1
    assert not any((tmp_path / "cache").rglob("*.json"))  # no verdict, nothing cached: the next run asks again
    assert "| no verdict (the judge failed or answered nonsense; the clustering decided) | 1 |" in \
        (tmp_path / "ds" / "README.md").read_text()


def test_build_refuses_a_judge_it_cannot_make_before_writing(people, tmp_path, monkeypatch):
    from sameid.backends import registry
    from sameid.dataset.pipeline import BuildConfig, build_dataset

    registry.create_backend.cache_clear()
    for name in ("SAMEID_JUDGE_BASE_URL", "OPENAI_BASE_URL", "SAMEID_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingModelError, match="API key"):
        _build(people, tmp_path / "ds", tmp_path / "cache")
    assert not (tmp_path / "ds").exists()
    with pytest.raises(SameIdError, match="unknown judge backend"):
        build_dataset(BuildConfig(source=str(people), out=str(tmp_path / "x"), judge="oracle"), progress=False)
    with pytest.raises(SameIdError, match="judge-clear-fraction"):
        build_dataset(BuildConfig(source=str(people), out=str(tmp_path / "x"), judge="consensus",
                                  judge_clear_fraction=1.5), progress=False)
