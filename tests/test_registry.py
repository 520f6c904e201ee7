"""One registry shape for methods, attacks and judges: names, aliases, config objects, option help, entry points."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
import textwrap

import pytest
import torch

import erasurelab as el
from erasurelab.api import erase, method_config
from erasurelab.attacks import get_attack
from erasurelab.attacks.base import ATTACKS, attack_config
from erasurelab.attacks.ring_a_bell import RingABellConfig
from erasurelab.configs import config_dict, option_rows
from erasurelab.errors import ErasureLabError
from erasurelab.judges import available_judges, load_judge
from erasurelab.judges.base import JUDGES, is_judge_name, register_parametric_judge
from erasurelab.methods import available_methods, get_method
from erasurelab.methods.base import METHODS
from erasurelab.methods.duo import DuoConfig
from erasurelab.methods.esd import EsdConfig
from erasurelab.methods.pure import PureConfig
from erasurelab.methods.trust import TrustConfig
from erasurelab.methods.uce import UceConfig, resolve_mode
from test_cli import run_cli
from tiny_bert_pipeline import tiny_bert_pipeline

torch.set_num_threads(1)

METHOD_CONFIGS = {"pure": PureConfig, "uce": UceConfig, "esd": EsdConfig, "trust": TrustConfig, "duo": DuoConfig}




@pytest.fixture()
def scratch_registries(monkeypatch):
    """Registrations and entry-point loading made in a test are undone after it."""
    for registry in (METHODS, ATTACKS, JUDGES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_aliases", dict(registry._aliases))
        monkeypatch.setattr(registry, "_entry_points_loaded", False)


# --- names ---------------------------------------------------------------------------------------


def test_aliases_and_case_resolve_to_the_canonical_entry() -> None:
    assert get_attack("TI").name == get_attack("textual_inversion").name == "textual-inversion"
    assert get_attack("Ring_A_Bell") is get_attack("ring-a-bell")
    assert get_attack("reemergence").name == "ft"
    assert get_method(" UCE ").name == "uce" and get_method("uce").factory is get_method("Uce").factory
    assert set(METHOD_CONFIGS) <= set(available_methods())
    for name, config_cls in METHOD_CONFIGS.items():
        assert get_method(name).config_cls is config_cls


@pytest.mark.parametrize("lookup, name, close", [
    (get_method, "uec", "uce"),
    (get_attack, "ring-a-bel", "ring-a-bell"),
    (load_judge, "shapez", "shapes"),
])
def test_unknown_names_are_one_line_with_suggestions(lookup, name: str, close: str) -> None:
    with pytest.raises(ErasureLabError) as info:
        lookup(name)
    message = str(info.value)
    assert "\n" not in message and f"did you mean: {close}" in message and "available:" in message


def test_parametric_judge_names(scratch_registries) -> None:
    seen = []

    @register_parametric_judge("testparam")
    def _factory(argument: str) -> object:
        """A test judge taking an argument."""
        seen.append(argument)
        return argument

    assert load_judge("testparam:Some/Folder") == "Some/Folder" and seen == ["Some/Folder"]  # case kept
    assert "testparam:ARGUMENT" in available_judges()
    assert is_judge_name("testparam:x") and not is_judge_name("testparam:") and not is_judge_name("testparum:x")
    with pytest.raises(ErasureLabError, match="needs an argument"):
        load_judge("testparam")


# --- config objects ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return tiny_bert_pipeline(0)


def test_erase_with_a_config_equals_erase_with_the_same_options(pipe) -> None:
    options = {"lam": 2.0, "erase_scale": 0.5, "projections": ["to_v"]}
    by_name = erase(pipe, "red", "uce", **options)
    by_config = erase(pipe, "red", el.UceConfig(**{**options, "projections": ("to_v",)}))
    assert by_config.meta["method"] == by_name.meta["method"] == "uce"
    assert by_config.meta["config"] == by_name.meta["config"]
    assert set(by_config.deltas) == set(by_name.deltas) and by_name.deltas
    assert all(k.endswith("to_v.weight") for k in by_name.deltas)
    for key, delta in by_name.deltas.items():
        assert torch.equal(by_config.deltas[key].delta(), delta.delta())
    default = erase(pipe, "red", "uce")
    assert any(not torch.equal(default.deltas[k].delta(), d.delta()) for k, d in by_name.deltas.items())


def test_a_config_with_conflicting_options_is_a_one_line_error(pipe) -> None:
    with pytest.raises(ErasureLabError) as info:
        erase(pipe, "red", el.UceConfig(lam=1.0), lam=2.0)
    assert "\n" not in str(info.value) and "conflicts" in str(info.value) and "lam" in str(info.value)
    entry, config = method_config(el.UceConfig(lam=1.0), {"lam": 1.0})  # repeating a value is no conflict
    assert entry.name == "uce" and config.lam == 1.0
    with pytest.raises(ErasureLabError, match="did you mean: lam"):
        method_config(el.UceConfig(), {"lamb": 1.0})
    with pytest.raises(ErasureLabError, match="not the config of any registered method"):
        erase(pipe, "red", RingABellConfig())


def test_attack_configs_name_their_attack() -> None:
    entry, config = attack_config(RingABellConfig(generations=0), {"generations": 0})
    assert entry.name == "ring-a-bell" and config.generations == 0
    with pytest.raises(ErasureLabError, match="conflicts"):
        attack_config(RingABellConfig(generations=0), {"generations": 5})
    with pytest.raises(ErasureLabError, match="not the config of any registered attack"):
        attack_config(el.UceConfig(), {})


def test_el_attack_runs_a_config_and_asks_for_what_it_cannot_guess() -> None:
    from attack_stubs import always

    m0, me = tiny_bert_pipeline(0), tiny_bert_pipeline(1)
    config = RingABellConfig(k=3, population=6, generations=2, n_pairs=2, n_prompts=1)
    result = el.attack(me, "red", config, reference=m0, judge=always(True))
    assert result.name == "ring-a-bell" and result.config == config_dict(config) and result.asr.denominator == 1
    with pytest.raises(ErasureLabError, match="needs reference="):
        el.attack(me, "red", config, judge=always(True))            # a bare pipeline does not know its base
    with pytest.raises(ErasureLabError, match="needs judge="):
        el.attack(me, "red", config, reference=m0)                 # "shapes" reads only the embedded world
    with pytest.raises(ErasureLabError, match="conflicts"):
        el.attack(me, "red", config, reference=m0, judge=always(True), k=4)


def test_public_api_exports() -> None:
    assert el.UCEConfig is el.UceConfig is UceConfig and el.DUOConfig is DuoConfig and el.ESDConfig is EsdConfig
    assert el.PureConfig is PureConfig and el.TrustConfig is TrustConfig
    assert callable(el.attack) and {"attack", "UceConfig", "available_attacks"} <= set(el.__all__)


# --- option help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config_cls", [*METHOD_CONFIGS.values(), *(get_attack(n).config_cls for n in
                                                                     ("ti", "ring-a-bell", "unlearndiffatk", "ft"))])
def test_every_option_has_help(config_cls) -> None:
    missing = [f.name for f in dataclasses.fields(config_cls) if not f.metadata.get("help")]
    assert not missing, f"{config_cls.__name__}: no help for {missing}"


def test_model_defaults_are_what_the_methods_resolve(monkeypatch) -> None:
    """The two default columns of `erasurelab methods NAME` agree with what each method really picks."""
    import erasurelab.methods.esd as esd
    import erasurelab.methods.pure as pure
    import erasurelab.models.sampling as sampling
    from tiny_pipelines import tiny_sd15_pipeline

    sd, bert = tiny_sd15_pipeline(0), tiny_bert_pipeline(0)
    for k, embedded in enumerate((False, True)):
        for module in (sampling, esd, pure):
            monkeypatch.setattr(module, "is_embedded", lambda _pipe, e=embedded: e)
        resolved = {"esd": EsdConfig().resolve(sd, []), "trust": TrustConfig().resolve(sd),
                    "duo": DuoConfig().resolve(sd), "pure": dataclasses.asdict(PureConfig().resolved(sd))}
        for name, settings in resolved.items():
            for key, pair in METHOD_CONFIGS[name].model_defaults.items():
                assert settings[key] == pair[k], (name, key, embedded)
    assert resolve_mode(sd, "auto") == UceConfig.model_defaults["token_mode"][0]       # CLIP
    assert resolve_mode(bert, "auto") == UceConfig.model_defaults["token_mode"][1]     # the embedded BERT
    rows = {r.name: r for r in option_rows(EsdConfig)}
    assert rows["lr"].embedded.endswith(repr(esd.LR[1])) and rows["lr"].sd.endswith(repr(esd.LR[0]))
    assert rows["eta"].sd == ""                                                        # same on both


def test_cli_methods_uce_prints_every_option_with_help(capsys) -> None:
    code, out, _ = run_cli(["methods", "uce"], capsys)
    assert code == 0 and out.startswith("method uce")
    lines = out.splitlines()
    for f in dataclasses.fields(UceConfig):
        line = next((x for x in lines if x.split() and x.split()[0] == f.name), None)
        assert line is not None and line.endswith(f.metadata["help"]), f.name
    token_mode = next(x for x in lines if x.startswith("token_mode"))
    assert "auto: all" in token_mode and "auto: tail" in token_mode


def test_cli_lists_and_describes(capsys) -> None:
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0 and all(any(x.startswith(n + " ") for x in out.splitlines()) for n in METHOD_CONFIGS)
    code, out, _ = run_cli(["attacks", "ti"], capsys)
    assert code == 0 and out.startswith("attack textual-inversion") and "train_steps" in out and "steps" in out
    code, out, _ = run_cli(["judges"], capsys)
    assert code == 0 and "shapes" in out and "clip:ARGUMENT" in out
    code, _, err = run_cli(["methods", "uec"], capsys)
    assert code == 2 and err.count("\n") == 1 and "did you mean: uce" in err
    code, _, err = run_cli(["attacks", "nope"], capsys)
    assert code == 2 and "unknown attack" in err


# --- entry points --------------------------------------------------------------------------------


def test_a_plugin_is_loaded_on_the_first_unknown_name(scratch_registries, tmp_path, monkeypatch, capsys) -> None:
    module = "erasurelab_test_plugin_nothing"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        from erasurelab.edits import Edit
        from erasurelab.methods.base import register_method
        from erasurelab.registry import option


        @dataclass(frozen=True)
        class NothingConfig:
            scale: float = option(0.5, help="how much nothing to erase", sd_default=1.0)


        @register_method("nothing", NothingConfig, "erases nothing", aliases=("noop",))
        def erase_nothing(pipe, specs, config, quiet=True):
            return Edit()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    groups: list[str] = []
    plugin = importlib.metadata.EntryPoint(name="nothing", value=module, group="erasurelab.methods")
    broken = importlib.metadata.EntryPoint(name="broken", value="erasurelab_no_such_module_xyz",
                                           group="erasurelab.methods")

    def entry_points(group: str | None = None, **_: object) -> list[importlib.metadata.EntryPoint]:
        groups.append(str(group))
        return [broken, plugin] if group == "erasurelab.methods" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert get_method("uce").name == "uce" and groups == []          # known names never touch entry points
    assert module not in sys.modules
    with pytest.warns(UserWarning, match="could not load method plugin 'broken'"):
        entry = get_method("noop")
    assert entry.name == "nothing" and module in sys.modules and groups == ["erasurelab.methods"]
    assert "nothing" in available_methods() and groups == ["erasurelab.methods"]    # loaded once
    assert method_config(sys.modules[module].NothingConfig(scale=2.0), {})[0] is entry
    code, out, _ = run_cli(["methods", "nothing"], capsys)
    assert code == 0 and "how much nothing to erase" in out and "1.0" in out
    sys.modules.pop(module, None)
