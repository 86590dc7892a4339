"""`medprobe serve` as a user meets it: a real server process on a free loopback port, a tiny model fitted on real
HAM10000 images (plain efficientnet_lite0, --selection val), and the answers checked against `medprobe predict`,
against brute-force cosine, and under hostile uploads, a full queue and a missing token; the page in headless Chromium."""

import contextlib
import csv
import hashlib
import io
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import SHARED_DATA, copy_ham, write_dicom
from medprobe.cli import main
from medprobe.core.errors import ModelError
from medprobe.data.datasets import Dataset
from medprobe.data.sources import FileImages
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import create_encoder
from medprobe.probes.index import TrainingIndex

HAM = SHARED_DATA / "ham10000_melnv"
ENCODER = "efficientnet_lite0"
MAX_BYTES = 2_000_000



class Server:
    """`medprobe serve` in a subprocess; the URL comes from the line it prints once it listens."""

    def __init__(self, model, *flags, env=None, cache=None):
        environment = {**os.environ, **(env or {})}
        if cache:
            environment["MEDPROBE_CACHE"] = str(cache)
        self.process = subprocess.Popen([sys.executable, "-m", "medprobe.cli", "serve", str(model), "--port", "0", *map(str, flags)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        ready, _, _ = select.select([self.process.stdout], [], [], 300)
        line = self.process.stdout.readline() if ready else ""
        if "http://" not in line:
            self.stop()
            pytest.fail(f"the server did not start: {line!r} {self.process.stderr.read()[-3000:]}")
        self.url = line.split("http://", 1)[1].split("/", 1)[0].join(["http://", ""])

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=120, **kw)

    def post(self, path, **kw):
        return requests.post(self.url + path, timeout=120, **kw)

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The model (fitted once), new images (JPEGs and one DICOM) and one server with an audit log and a small body limit."""
    root = tmp_path_factory.mktemp("serve")
    train = copy_ham(root / "train", "train", per_class=8)
    cache = root / "cache"
    fit = ["fit", "--dataset", str(train), "--save", str(root / "model"), "--cache-dir", str(cache), "--quiet", "--n-boot", "200",
           "--encoder", ENCODER, "--selection", "val"]
    assert main(fit) == 0
    new = copy_ham(root / "new", "test", per_class=2)
    gray = np.asarray(Image.open(sorted(new.rglob("*.jpg"))[0]).convert("L"))
    write_dicom(new / "scan.dcm", gray.astype(np.uint16) * 16, bits_stored=12)
    server = Server(root / "model", "--cache-dir", cache, "--log", root / "audit", "--max-bytes", MAX_BYTES, cache=cache)
    yield {"root": root, "model": root / "model", "train": train, "new": new, "cache": cache, "server": server}
    server.stop()


def files_of(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def still_answers(server):
    """After a hostile request: the server is alive and still answers a good image."""
    assert server.get("/healthz").json()["status"] == "ok"
    good = sorted(HAM.glob("test/nv/*.jpg"))[0].read_bytes()
    assert server.post("/v1/predict", data=good).status_code == 200


def test_healthz_model_card_docs_and_page(served):
    server = served["server"]
    health = server.get("/healthz").json()
    assert health["status"] == "ok" and health["token_required"] is False and health["model"].startswith("model@")
    card = server.get("/v1/model").json()
    meta = json.loads((served["model"] / "model.json").read_text())
    assert card["task"] == "binary" and card["labels"] == ["mel", "nv"] and card["encoder"]["name"] == ENCODER
    assert card["probe"]["name"] == "logreg" and card["probe"]["selection"]["protocol"] == "val"
    assert card["test_metrics"]["auc"] == pytest.approx(meta["trained_on"]["test_metrics"]["auc"])
    assert len(card["test_metrics"]["auc_ci"]) == 2 and "youden" in card["operating_points"]
    assert card["training_set"]["indexed"] == card["training_set"]["images"]["train"] == meta["trained_on"]["dataset"]["n"]["train"]
    assert card["sha256"] == hashlib.sha256((served["model"] / "model.json").read_bytes()).hexdigest()
    assert card["out_of_distribution"]["flag_above_percentile"] == 99.0
    assert "/v1/predict" in server.get("/openapi.json").json()["paths"]
    assert server.get("/docs").status_code == 200
    page = server.get("/").text
    assert "Research use only" in page and 'type="file"' in page


def test_answers_equal_medprobe_predict_for_the_same_files(served, tmp_path):
    server, new = served["server"], served["new"]
    files = files_of(new)
    assert main(["predict", str(served["model"]), str(new), "--out", str(tmp_path / "p.csv"), "--cache-dir", str(served["cache"]),
                 "--quiet", "--runtime", "onnx", "--decision", "youden"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    batch = server.post("/v1/predict/batch", files=[("files", (p.name, p.read_bytes())) for p in files])
    assert batch.status_code == 200
    answers = batch.json()["answers"]
    assert len(answers) == len(files) == 5
    for path, answer in zip(files, answers):
        row = rows[str(path)]
        expected = [float(row["p_mel"]), float(row["p_nv"])]
        # The same ONNX graph, run in a batch of 5 here and of 5 there; only rounding in the encoder may differ.
        np.testing.assert_allclose([answer["probabilities"]["mel"], answer["probabilities"]["nv"]], expected, rtol=0, atol=1e-5)
        assert answer["label"] == row["predicted"] and answer["decision"]["label"] == row["decision"]
        assert answer["image"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # One at a time, raw body and multipart alike, the same answer as in the batch.
    for path, answer in zip(files, answers):
        raw = server.post("/v1/predict", data=path.read_bytes(), headers={"Content-Type": "application/octet-stream"}).json()
        part = server.post("/v1/predict", files={"file": (path.name, path.read_bytes())}).json()
        for single in (raw, part):
            np.testing.assert_allclose(list(single["probabilities"].values()), list(answer["probabilities"].values()), atol=1e-5)
            assert single["model"]["id"] == answer["model"]["id"] and set(single["timings_ms"]) == {"batch_size", "decode_ms", "embed_ms", "probe_ms", "total_ms"}


def test_answer_holds_decision_neighbours_and_ood(served):
    server = served["server"]
    answer = server.post("/v1/predict", data=files_of(served["new"])[1].read_bytes()).json()
    saved = json.loads((served["model"] / "model.json").read_text())["decisions"]["thresholds"]["youden"]["nv"]
    column = answer["decision"]["columns"]["nv"]
    assert answer["decision"]["rule"] == "youden" and answer["decision"]["chosen_on"] == "val"
    assert column["threshold"] == saved["threshold"] and column["sensitivity"] == saved["val"]["sensitivity"]
    assert column["positive"] == (answer["probabilities"]["nv"] >= saved["threshold"])
    assert answer["decision"]["label"] == ("nv" if column["positive"] else "mel")
    assert answer["calibrated"] is False and answer["probabilities_are"] == "the probe's probabilities"
    assert len(answer["neighbours"]) == 5 and all(n["label"] in ("mel", "nv") for n in answer["neighbours"])
    ood = answer["out_of_distribution"]
    assert set(ood) == {"score", "percentile", "flagged", "reference"} and 0 <= ood["percentile"] <= 100
    thumb = server.get(answer["neighbours"][0]["thumbnail"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size[0] <= 128
    assert server.get("/v1/training-images/100000/thumbnail").status_code == 404


def test_neighbours_equal_brute_force_cosine(served):
    """Recomputed here from fresh embeddings (PyTorch eager, not the server's ONNX graph): cosine, highest first."""
    server, model = served["server"], served["model"]
    record = json.loads((model / "index.json").read_text())
    root = Path(record["root"])
    train_files = [root / i for i in record["ids"]]
    queries = files_of(served["new"])
    encoder, transform = create_encoder(ENCODER, runtime="torch")
    options = EmbedOptions(ENCODER, runtime="torch", cache_dir=str(served["cache"]), progress=False)

    def vectors(paths):
        data = Dataset("x", "binary", ["a", "b"], np.array([str(p) for p in paths]), np.array([""] * len(paths)),
                       np.zeros(len(paths), np.int64), FileImages(paths))
        return embed(data, encoder, transform, options).vectors.astype(np.float64)

    X, Q = vectors(train_files), vectors(queries)
    cosine = (Q @ X.T) / np.outer(np.linalg.norm(Q, axis=1), np.linalg.norm(X, axis=1))
    for query, row in zip(queries, cosine):
        answer = server.post("/v1/predict", data=query.read_bytes()).json()
        order = np.argsort(-row, kind="stable")[:5]
        assert [n["id"] for n in answer["neighbours"]] == [record["ids"][j] for j in order]
        np.testing.assert_allclose([n["similarity"] for n in answer["neighbours"]], row[order], atol=1e-4)


def test_dicom_upload_raw_and_multipart(served):
    server = served["server"]
    dicom = served["new"] / "scan.dcm"
    raw = server.post("/v1/predict", data=dicom.read_bytes(), headers={"Content-Type": "application/dicom"})
    part = server.post("/v1/predict", files={"file": ("scan.dcm", dicom.read_bytes(), "application/dicom")})
    assert raw.status_code == part.status_code == 200, raw.text
    assert raw.json()["image"]["mode"] == "L" and raw.json()["probabilities"] == part.json()["probabilities"]


def png_header_only(width, height):
    """A PNG that declares width x height 1-bit pixels and holds a few rows: a decompression bomb's header, 100 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def hostile_requests():
    jpeg = sorted(HAM.glob("test/mel/*.jpg"))[0].read_bytes()
    big = io.BytesIO()
    Image.effect_noise((1200, 1200), 64).save(big, format="TIFF")  # 1.4 MB, under the byte limit; a genuine image
    return {
        "text file": (dict(data=b"hello, this is not an image"), 415, "unsupported file type"),
        "PDF": (dict(data=b"%PDF-1.4\n" + b"0" * 200, headers={"Content-Type": "application/pdf"}), 415, "unsupported file type"),
        "JSON body": (dict(json={"image": "x"}), 415, "unsupported file type"),
        "decompression bomb": (dict(data=png_header_only(100_000, 100_000)), 413, "decompression-bomb limit"),
        "elongated image": (dict(data=png_header_only(100_000, 2)), 413, "aspect ratio"),
        "truncated JPEG": (dict(data=jpeg[: len(jpeg) // 2]), 422, "truncated"),
        "empty body": (dict(data=b""), 400, "empty upload"),
        "body over the limit": (dict(data=b"\xff" * (MAX_BYTES + 1)), 413, "request too large"),
        "streamed body over the limit": (dict(data=(b"\xff" * 65536 for _ in range(MAX_BYTES // 65536 + 2))), 413, "request too large"),
        "multipart without a file": (dict(files={"field": (None, "value")}), 400, "no file field"),
        "broken multipart": (dict(data=b"--xx\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=xx"}), 400, "multipart"),
        "two files to /v1/predict": (dict(files=[("a", ("a.jpg", jpeg)), ("b", ("b.jpg", jpeg))]), 400, "takes one image"),
        "DICOM without pixels": (dict(data=_dicom_without_pixels()), 422, "no pixel data"),
        "noise TIFF (fine)": (dict(data=big.getvalue()), 200, None),
    }


def _dicom_without_pixels():
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report: no image
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID, "SR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("name", list(hostile_requests()))
def test_hostile_request_gets_a_named_4xx_and_the_server_lives_on(served, name):
    server = served["server"]
    kwargs, status, words = hostile_requests()[name]
    response = server.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    if words:
        assert words in response.json()["detail"]
    still_answers(server)


def test_batch_reports_each_bad_file_in_its_place(served):
    server = served["server"]
    good = files_of(served["new"])[0]
    answers = server.post("/v1/predict/batch", files=[("f", ("a.jpg", good.read_bytes())), ("f", ("b.png", b"junk")),
                                                       ("f", ("c.jpg", good.read_bytes()[:300]))]).json()["answers"]
    assert "label" in answers[0] and answers[1]["status"] == 415 and answers[2]["status"] == 422
    too_many = server.post("/v1/predict/batch", files=[("f", (f"{i}.jpg", good.read_bytes())) for i in range(33)])
    assert too_many.status_code == 413 and "the most is 32" in too_many.json()["detail"]
    still_answers(server)


def test_full_queue_gets_503_with_retry_after_and_the_token_is_required(served):
    token = "s3cret-token"
    server = Server(served["model"], "--cache-dir", served["cache"], "--queue", 1, "--max-batch", 1, "--max-files", 1, "--log",
                    served["root"] / "audit-tight", env={"MEDPROBE_TOKEN": token}, cache=served["cache"])
    try:
        jpeg = files_of(served["new"])[0].read_bytes()
        auth = {"Authorization": f"Bearer {token}"}
        assert server.post("/v1/predict", data=jpeg).status_code == 401
        assert server.post("/v1/predict", data=jpeg, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert server.get("/v1/model").status_code == 401 and server.get("/healthz").json()["token_required"] is True
        assert server.post("/v1/predict", data=jpeg, headers=auth).status_code == 200
        statuses, retry = [], []

        def client():
            for _ in range(6):
                r = server.post("/v1/predict", data=jpeg, headers=auth)
                statuses.append(r.status_code)
                if r.status_code == 503:
                    retry.append((r.headers.get("Retry-After"), r.json()["detail"]))

        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
        assert all(after and int(after) >= 1 and detail.startswith("busy: ") for after, detail in retry), retry
        assert server.get("/healthz").json()["batches"]["refused"] >= 1
        assert server.post("/v1/predict", data=jpeg, headers=auth).status_code == 200
        answered = statuses.count(200) + 2
        # The audit log survives a kill: every answer sent is on disk, one complete JSON line each.
        server.stop(signal.SIGKILL)
        lines = (served["root"] / "audit-tight" / "answers.jsonl").read_text().splitlines()
        assert len(lines) == answered and all(json.loads(line)["image_sha256"] == hashlib.sha256(jpeg).hexdigest() for line in lines)
    finally:
        server.stop()


def test_open_address_without_a_token_refuses_to_start(served, medprobe):
    done = medprobe("serve", served["model"], "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2 and "without a bearer token" in done.stderr and "--token" in done.stderr
    assert "Traceback" not in done.stderr


def test_audit_log_holds_each_answer_without_pixels_and_becomes_a_table(served, medprobe, tmp_path):
    server = served["server"]
    path = files_of(served["new"])[2]
    answer = server.post("/v1/predict", data=path.read_bytes()).json()
    lines = (served["root"] / "audit" / "answers.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["answer"] == answer and last["model_id"] == answer["model"]["id"] and last["image_sha256"] == answer["image"]["sha256"]
    assert set(last) == {"time", "image_sha256", "model_id", "answer"} and path.name not in lines[-1]
    done = medprobe("serve-log", served["root"] / "audit", "--csv", tmp_path / "log.csv")
    assert done.returncode == 0
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(lines) and rows[-1]["image_sha256"] == answer["image"]["sha256"]
    assert float(rows[-1]["p_nv"]) == answer["probabilities"]["nv"] and rows[-1]["label"] == answer["label"]


def test_index_is_checked_and_can_be_left_out(served, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(served["model"], model)
    record = json.loads((model / "index.json").read_text())
    record["ids"][0] = "../../etc/passwd"
    (model / "index.json").write_text(json.dumps(record))
    meta = json.loads((model / "model.json").read_text())
    with pytest.raises(ModelError, match="index.json does not match its checksum"):
        TrainingIndex.read(model, meta["index"])
    assert main(["fit", "--dataset", str(served["train"]), "--save", str(tmp_path / "bare"), "--cache-dir", str(served["cache"]), "--quiet",
                 "--n-boot", "200", "--encoder", ENCODER, "--selection", "val", "--no-index"]) == 0
    assert json.loads((tmp_path / "bare" / "model.json").read_text())["index"] is None
    assert not (tmp_path / "bare" / "index.json").exists()
    from medprobe.serving.engine import Engine, ServeOptions

    engine = Engine(tmp_path / "bare", ServeOptions(cache_dir=str(served["cache"])))
    try:
        answer = engine.answer(files_of(served["new"])[0].read_bytes())
        assert answer["neighbours"] is None and answer["out_of_distribution"] is None and answer["label"] in ("mel", "nv")
    finally:
        engine.close()


@contextlib.contextmanager
def headless_chromium(profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path, browser = shutil.which("chromedriver"), shutil.which("chromium")
    if not driver_path or not browser:
        pytest.fail("headless Chromium and its driver are needed to test the page: make chromium (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", "--window-size=1100,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_in_headless_chromium_uploads_and_shows_the_answer(served, tmp_path):
    """A real file chosen in the page's file input, then the page's content: answer, decision, cases, OOD line, card, note."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium(tmp_path / "profile") as driver:
        driver.get(served["server"].url + "/")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "card").text.strip())
        assert not driver.find_element(By.ID, "token-row").is_displayed()
        image = files_of(served["new"])[1]
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "result").is_displayed())
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#neighbours img")) == 5)
        expected = served["server"].post("/v1/predict", data=image.read_bytes()).json()
        assert driver.find_element(By.ID, "label").text == expected["label"]
        assert f"{100 * max(expected['probabilities'].values()):.1f} %" in driver.find_element(By.ID, "probability").text
        assert "Decision at youden" in driver.find_element(By.ID, "decision").text
        assert expected["neighbours"][0]["id"] in driver.find_element(By.ID, "neighbours").text
        ood = driver.find_element(By.ID, "ood").text
        assert ("Warning: out of distribution" in ood) == expected["out_of_distribution"]["flagged"] and "percentile" in ood.lower()
        assert "Research use only" in driver.find_element(By.ID, "research-note").text
        assert ENCODER in driver.find_element(By.ID, "card").text and "test AUC" in driver.find_element(By.ID, "card").text
        assert expected["image"]["sha256"] in driver.find_element(By.ID, "digest").text
        shot = Path(os.environ.get("MEDPROBE_SERVE_SCREENSHOT", tmp_path / "page.png"))
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 500


def test_page_asks_for_the_token_and_sends_it_with_every_request(served, tmp_path):
    """Against a server that wants a token: the page shows the token input and the 401, a wrong token still fails, the right
    one loads the card, and an upload and its case thumbnails go through with it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    token = "page-s3cret"
    server = Server(served["model"], "--cache-dir", served["cache"], env={"MEDPROBE_TOKEN": token}, cache=served["cache"])
    try:
        with headless_chromium(tmp_path / "profile") as driver:
            driver.get(server.url + "/")
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "token-row").is_displayed())
            WebDriverWait(driver, 60).until(lambda d: "model card:" in d.find_element(By.ID, "status").text)
            assert "token" in driver.find_element(By.ID, "status").text.lower() and not driver.find_element(By.ID, "card").text.strip()

            def use(value):
                driver.find_element(By.ID, "token").clear()
                driver.find_element(By.ID, "token").send_keys(value)
                driver.find_element(By.ID, "token-save").click()

            use("wrong")
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith("model card:"))
            image = files_of(served["new"])[1]
            driver.find_element(By.ID, "file").send_keys(str(image))
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith("401"))
            assert not driver.find_element(By.ID, "result").is_displayed()
            use(token)
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith("ready"))
            assert driver.find_element(By.ID, "card").text.strip()
            driver.find_element(By.ID, "file").clear()
            driver.find_element(By.ID, "file").send_keys(str(image))
            WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "result").is_displayed())
            WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#neighbours img")) == 5)
            expected = server.post("/v1/predict", data=image.read_bytes(), headers={"Authorization": f"Bearer {token}"}).json()
            assert driver.find_element(By.ID, "label").text == expected["label"]
            assert expected["image"]["sha256"] in driver.find_element(By.ID, "digest").text
    finally:
        server.stop()


def test_index_round_trip_and_ood_reference_equal_brute_force(tmp_path):
    """On made-up vectors: the leave-one-out reference, the flag rate on fresh draws of the same distribution (near 1 %),
    a far-away cluster flagged, and the saved files giving back the same index."""
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    train = centre + rng.normal(size=(400, 64))
    index = TrainingIndex.build(train, rng.integers(0, 2, 400), [f"img{i}" for i in range(400)], [f"{i:064x}" for i in range(400)], k=3)
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    np.testing.assert_allclose(index.reference, np.sort(1 - np.sort(cosine, axis=1)[:, -3]), atol=1e-6)
    same = centre + rng.normal(size=(4000, 64))
    flagged = np.mean([o["flagged"] for o in index.out_of_distribution(index.similarities(same))])
    assert flagged < 0.03  # nominal 1 %; the reference is 400 images, so its 99th percentile is itself uncertain
    other = -3 * centre + rng.normal(size=(50, 64))
    assert all(o["flagged"] and o["percentile"] == 100 for o in index.out_of_distribution(index.similarities(other)))
    files = index.files()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    loaded = TrainingIndex.read(tmp_path, {name: hashlib.sha256(data).hexdigest() for name, data in files.items()})
    assert loaded.ids == index.ids and loaded.k == 3
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    np.testing.assert_array_equal(loaded.neighbours(loaded.similarities(same[:20]))[0], index.neighbours(index.similarities(same[:20]))[0])


def test_neighbours_match_a_full_stable_sort_with_ties():
    """The partial sort gives the full sort's order, ties (duplicate training images) broken by the lower row."""
    rng = np.random.default_rng(1)
    train = rng.normal(size=(60, 16))
    train[[7, 30, 31]] = train[3]  # four copies of one image: equal cosines for every query
    index = TrainingIndex.build(train, np.zeros(60, np.int64), [f"i{i}" for i in range(60)], [f"{i:064x}" for i in range(60)], k=2)
    queries = np.vstack([train[3] + 0.01 * rng.normal(size=16), rng.normal(size=(9, 16))])
    sims = index.similarities(queries)
    for n in (1, 3, 5, 60):
        rows, cosines = index.neighbours(sims, n)
        expected = np.argsort(-sims, axis=1, kind="stable")[:, :n]
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_array_equal(cosines, np.take_along_axis(sims, expected, axis=1))
    assert list(index.neighbours(sims, 4)[0][0]) == [3, 7, 30, 31]
