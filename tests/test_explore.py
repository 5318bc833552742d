"""Tests of dgmn_ref.explore (loading any run, walk numbers) and dgmn_ref.explorer_html (the
self-contained page): the page's inline data decodes back to what viz extracted, within the
quantisation; bad checkpoints and images get errors naming the file. The page in a real
browser is tested in tests/test_browser.py."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dgmn_ref import cli
from dgmn_ref.figures import explore, explorer_html, viz  # noqa: E402
from dgmn_ref.layer import DGMN  # noqa: E402
from dgmn_ref.training import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS_PAGE = REPO / "docs" / "explorer.html"
NUMBERS = REPO / "results" / "explorer_walks.json"
NUMBERS_REDUNDANT = REPO / "results" / "explorer_walks_redundant.json"
NUMPY = {"int8": "<i1", "uint8": "<u1", "int16": "<i2", "uint16": "<u2", "uint32": "<u4"}
NUMPY["float32"] = "<f4"


def small_data(batch: int = 2, size=(5, 7), rates=(1, 2), seed: int = 0) -> viz.WalkData:
    torch.manual_seed(seed)
    layer = DGMN(8, rates=rates, groups=2).eval()
    with torch.no_grad():  # non-zero walks, as after training
        for dmc in layer.rate_messages:
            dmc.walk_conv.weight.normal_(0, 0.3)
    return viz.extract_walks(layer, torch.randn(batch, 8, *size))


def decode(packed: dict) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(packed["data"]), dtype=NUMPY[packed["dtype"]])
    return raw.reshape(packed["shape"]).astype(np.float64) * packed["scale"]


def page_payload(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="dgmn-data">(.*?)</script>', html, re.S)
    assert match, "the page holds no inline data block"
    return json.loads(match.group(1))


# ------------------------------------------------------------------------ the page
def test_payload_decodes_to_the_extracted_walks():
    data = small_data()
    pictures = np.random.default_rng(0).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    payload = explorer_html.explorer_payload({"ctx": data}, pictures, ["a", "b"])
    layer = payload["layers"][0]
    arrays = layer["arrays"]
    assert layer["rates"] == [1, 2] and layer["size"] == [5, 7]
    walked = decode(arrays["walked"])
    assert np.abs(walked - data.walked.double().numpy()).max() <= arrays["walked"]["scale"]
    uniform = decode(arrays["uniform"])
    assert np.abs(uniform - data.uniform.double().numpy()).max() <= arrays["uniform"]["scale"]
    affinity = decode(arrays["affinity"])
    assert np.abs(affinity - data.affinity.double().numpy()).max() <= 1 / 255
    norms = data.weights.double().norm(dim=2).numpy()
    assert np.allclose(decode(arrays["filter_norm"]), norms, atol=arrays["filter_norm"]["scale"])
    # The sparse per-rate source maps, summed over the rates, rebuild viz.message_sources.
    index = decode(arrays["source_index"]).astype(int)  # s b h w m
    weight = (
        decode(arrays["source_weight"])
        * decode(arrays["source_weight"]["node_scale"])[None, :, :, :, None]
    )
    for b, node in ((0, (0, 0)), (1, (2, 3)), (1, (4, 6))):
        dense = np.zeros(5 * 7)
        np.add.at(
            dense, index[:, b, node[0], node[1]].ravel(), weight[:, b, node[0], node[1]].ravel()
        )
        expected = viz.message_sources(data, node, b).double().numpy().ravel()
        assert np.abs(dense - expected).max() <= np.abs(expected).max() / 127 * len(data.rates)
        assert np.abs(dense - expected).max() < 0.05 * np.abs(expected).max()
    colours = [c["dark"] for c in layer["colours"]]
    assert colours == [
        matplotlib.colors.to_hex(c["dark"]) for c in viz.rate_colours(len(data.rates))
    ]


def test_page_is_self_contained(tmp_path):
    data = small_data(batch=1)
    pictures = np.zeros((1, 20, 28, 3), dtype=np.uint8)
    html = explorer_html.explorer_html(explorer_html.explorer_payload({"": data}, pictures))
    assert page_payload(html)["layers"][0]["name"] == "(model)"
    # No CDN, no fetch: nothing is loaded from anywhere but the page itself.
    assert not re.search(r"https?://|<link|\bsrc=|fetch\(|XMLHttpRequest|import\(", html)


def test_payload_rejects_mismatched_pictures():
    data = small_data(batch=2)
    with pytest.raises(ValueError, match="2 images but 1 pictures"):
        explorer_html.explorer_payload({"x": data}, np.zeros((1, 9, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        explorer_html.explorer_payload({"x": data}, np.zeros((2, 9, 9, 3)))


def test_committed_page():
    """docs/explorer.html: one file under 5 MB, four frames, the default checkpoint."""
    html = DOCS_PAGE.read_text(encoding="utf-8")
    assert len(html.encode()) <= 5_000_000, f"{DOCS_PAGE} is {len(html.encode()) / 1e6:.2f} MB"
    payload = page_payload(html)
    assert len(payload["frames"]) == 4
    assert payload["layers"][0]["rates"] == [1, 3, 6, 12]
    assert not re.search(r"https?://|<link|\bsrc=", html)
    size = f"{len(html.encode()) / 1e6:.2f} MB"
    for doc in (REPO / "README.md", REPO / "docs" / "explorer.md"):
        assert size in doc.read_text(), f"{doc} should quote the page's size, {size}"


# ----------------------------------------------------------------- loading any run
def write_run(folder: Path, **config) -> Path:
    folder.mkdir()
    cfg = TrainConfig(dataset="synthetic", crop_size=[32, 48], **config)
    torch.save({"config": cfg.to_dict(), "model": {}}, folder / "checkpoint.pt")
    return folder


def test_non_dgmn_checkpoint_is_named(tmp_path):
    run = write_run(tmp_path / "nl", context="nonlocal")
    with pytest.raises(ValueError, match=r"nl.*'nonlocal' model has no DGMN layer"):
        explore.load_model(run)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: cannot read it"):
        explore.load_model(junk)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a dgmn-ref train checkpoint"):
        explore.load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing"):
        explore.load_model(tmp_path / "missing")


def test_cli_names_the_bad_file(tmp_path, capsys):
    run = write_run(tmp_path / "nl", context="nonlocal")
    assert cli.main(["explore-export", str(run), "--out", str(tmp_path / "x.html")]) == 2
    assert "has no DGMN layer" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_image_files_are_resized_to_the_training_crop(tmp_path):
    cfg = TrainConfig(dataset="synthetic", crop_size=[32, 48])
    path = tmp_path / "street.jpg"
    Image.fromarray(np.full((60, 100, 3), 200, np.uint8)).save(path)
    frames = explore.load_frames(cfg, [str(path)])
    assert tuple(frames.images.shape) == (1, 3, 32, 48)
    assert frames.pictures.shape == (1, 32, 48, 3) and frames.pictures.dtype == np.uint8
    assert frames.names == (str(path),) and frames.labels is None
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nothing")
    with pytest.raises(ValueError, match="cannot read .*broken.png"):
        explore.load_frames(cfg, [str(broken)])
    with pytest.raises(ValueError, match="notes.txt is not a PNG or JPEG"):
        explore.load_frames(cfg, [str(tmp_path / "notes.txt")])
    with pytest.raises(ValueError, match="mix of frame indices and files"):
        explore.load_frames(cfg, [0, str(path)])


def test_dataset_frames_carry_labels_and_context():
    cfg = TrainConfig(dataset="synthetic", crop_size=[96, 192])
    frames = explore.load_frames(cfg, [1, 0])
    assert tuple(frames.images.shape) == (2, 3, 96, 192)
    assert frames.labels.shape == frames.context.shape == (2, 96, 192)
    assert explore.beacon_mask(frames.labels).sum() > 0
    with pytest.raises(ValueError, match="frame 99999 is not in the synthetic validation"):
        explore.load_frames(TrainConfig(dataset="synthetic"), [99999])


def test_redundant_run_reads_its_own_frames_and_cue(tmp_path):
    from dgmn_ref.data import CityscapesDataset
    from dgmn_ref.data.synthetic import make_synthetic_cityscapes

    root = make_synthetic_cityscapes(tmp_path / "red", n_train=1, n_val=3, task="redundant")
    cfg = TrainConfig(dataset="synthetic", root=str(root), crop_size=[96, 192])
    frames = explore.load_frames(cfg, [2, 0])
    own = CityscapesDataset(root, "val", return_context=True)
    assert torch.equal(frames.images[0], own[2][0]) and torch.equal(frames.context[1], own[0][2])
    cue = explore.cue_mask("redundant", frames)
    assert cue.shape == frames.context.shape
    for mask, context in zip(cue, frames.context, strict=True):
        columns = mask.any(dim=0)
        assert mask.all(dim=0).equal(columns)  # whole columns: the district's band
        assert 0.3 < columns.float().mean() < 0.37  # a third of the width
        vehicles = context.nonzero()[:, 1].float().mean()
        band = columns.nonzero().float().mean()
        assert (band - 96) * (vehicles - 96) < 0  # on the other side from the vehicles
        assert not (mask & context).any()
    with pytest.raises(ValueError, match="task: expected one of"):
        explore.cue_mask("needle", frames)


# ----------------------------------------------------------------------- numbers
def test_on_cells_rounds_to_the_nearest_cell_and_drops_outside():
    cells = torch.zeros(3, 4, dtype=torch.bool)
    cells[1, 2] = True
    positions = torch.tensor([[1.0, 2.0], [1.4, 2.4], [0.6, 1.6], [1.6, 2.0], [-0.6, 2.0]])
    assert explore._on_cells(positions, cells).tolist() == [True, True, True, False, False]


def test_walk_numbers_count_positions_on_the_cue():
    data = small_data(batch=2, size=(5, 7))
    cue = torch.zeros(2, 10, 14, dtype=torch.bool)  # image 2x the feature map
    cue[:, 4:6, 6:8] = True  # exactly feature cell (2, 3)
    numbers = explore.walk_numbers(data, cue)
    assert numbers["receivers"] == 2 * 5 * 7 and numbers["cue_area"] == round(1 / 35, 4)
    for s, entry in enumerate(numbers["rates"]):
        # Slow reference: count every sampled position by hand.
        hits_walked = hits_uniform = 0
        for b in range(2):
            for k in range(data.uniform.shape[1]):
                for y in range(5):
                    for x in range(7):
                        wy, wx = data.walked[s, b, k, :, y, x].tolist()
                        uy, ux = data.uniform[s, k, :, y, x].tolist()
                        hits_walked += (round(wy), round(wx)) == (2, 3)
                        hits_uniform += (round(uy), round(ux)) == (2, 3)
        total = 2 * data.uniform.shape[1] * 35
        assert entry["walked_on_cue"] == round(hits_walked / total, 4)
        assert entry["uniform_on_cue"] == round(hits_uniform / total, 4)
        length = data.walks[s].norm(dim=2).mean()
        assert entry["mean_walk_length"] == pytest.approx(float(length), abs=1e-3)
    # Receivers: only the cells at least half covered.
    receivers = torch.zeros(2, 10, 14, dtype=torch.bool)
    receivers[0, 0:2, 0:2] = True
    assert explore.walk_numbers(data, cue, receivers)["receivers"] == 1


@pytest.mark.parametrize("numbers_file", [NUMBERS, NUMBERS_REDUNDANT], ids=["beacon", "redundant"])
def test_committed_numbers_match_the_docs(numbers_file):
    numbers = json.loads(numbers_file.read_text())
    layer = numbers["layers"]["context"]
    docs = (REPO / "docs" / "explorer.md").read_text()
    for entry in layer["all nodes"]["rates"] + layer["mystery-vehicle nodes"]["rates"]:
        assert f"{entry['walked_on_cue']:.1%}" in docs, entry
        assert f"{entry['uniform_on_cue']:.1%}" in docs, entry
        assert f"{entry['mean_walk_length']:.2f}" in docs, entry
    for item in numbers["gallery"]:
        assert (REPO / item["file"]).is_file() and item["caption"] in docs
