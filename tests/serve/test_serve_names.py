"""The server tells clients the model's name, never where its files are on the server."""

from fastapi.testclient import TestClient
from helpers import save_tiny_model

from stamp.inference import StampPredictor
from stamp.model.modeling import StampModel
from stamp.serve.app import create_app
from stamp.serve.settings import ServeSettings


def test_model_info_and_page_show_a_name_not_a_path(tmp_path):
    folder = tmp_path / "secret" / "place" / "my-model"
    save_tiny_model(folder)
    app = create_app(StampPredictor(StampModel.from_pretrained(folder)), ServeSettings(web=True))
    with TestClient(app) as client:
        info = client.get("/v1/model").json()
        assert info["name"] == "my-model"
        assert str(tmp_path) not in client.get("/v1/model").text
        assert str(tmp_path) not in client.get("/").text
        missing = client.get("/v1/nope")
        assert missing.status_code == 404 and str(tmp_path) not in missing.text


def test_the_command_names_the_model_by_its_folder(tmp_path):
    from stamp.cli import build_parser
    from stamp.cli.serve import settings_from_args

    args = build_parser().parse_args(["serve", "--model", str(tmp_path / "secret" / "my-model")])
    assert settings_from_args(args, web=False).model_name == "my-model"
    assert settings_from_args(build_parser().parse_args(["serve"]), web=True).model_name == "tiny-synth"
