"""Every function our CPU rules schedule is checked against its unscheduled self (tiny
shapes, random inputs), so a schedule bug cannot ship; and the rules really apply."""
from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.slow

from builder.compiler.targets import TARGETS as _ALL
from builder.options import BuildOptions

TARGETS = {"x86_64": _ALL["x86_64"].tvm_target_json()}  # what builds use


def _relax(spec):
    from builder.compiler.export import to_relax

    return to_relax(spec)


def _spec(family, model_dir, task, seq_len=16):
    from builder.model.families import FAMILIES

    config = json.loads((model_dir / "config.json").read_text())
    return FAMILIES[family].load(model_dir, config, task, BuildOptions(seq_len=seq_len))


def _check(mod, symbol_value=2, params=None, target=None):
    import tvm

    from builder.tools.kernels import check_kernels

    report = check_kernels(mod, tvm.target.Target(target or TARGETS["x86_64"]), params=params,
                           symbol_value=symbol_value)
    bad = [r for r in report if r["rule"] and r["max_rel_diff"] > 1e-5]
    assert not bad, bad
    return report


def _by_rule(report):
    out = {}
    for r in report:
        out.setdefault(r["rule"], []).append(r["kernel"])
    return out


def test_bert_kernels(tiny_bert_cls_dir):
    report = _check(_relax(_spec("bert", tiny_bert_cls_dir, "text-classification")))
    rules = _by_rule(report)
    contraction = rules.get("EdgebundleCPUContraction", [])
    # dense layers (QKV/out, FFN up/down, pooler, classifier head with N=3) and the two
    # attention batch matmuls per layer
    assert sum(k.startswith("fused_matmul") for k in contraction) >= 4, rules
    assert sum(k.startswith("matmul") for k in contraction) >= 2, rules
    assert any("softmax" in k for k in rules.get("Reduction", [])), rules
    assert None not in rules, rules[None]


def test_resnet_kernels(tiny_resnet_dir):
    report = _check(_relax(_spec("resnet", tiny_resnet_dir, "image-classification")))
    rules = _by_rule(report)
    convs = [k for r in ("EdgebundleCPUContraction", "EdgebundleCPUWinograd", "EdgebundleCPUPackedConv")
             for k in rules.get(r, []) if "conv2d" in k]
    # stem 7x7/2, 1x1, 3x3, strided 3x3 and 1x1 projection shortcuts, with BN+ReLU(+residual) epilogues
    assert len(convs) >= 8, rules
    assert any("relu" in k for k in convs) and any("add" in k for k in convs), convs
    assert rules.get("EdgebundleCPUWinograd"), rules  # its stride-1 3x3 convs
    assert len(rules.get("EdgebundleCPUPackedConv", [])) >= 3, rules  # its 1x1 convs
    assert any("conv2d" in k for k in rules.get("EdgebundleCPUContraction", [])), rules  # stem, strided 3x3
    assert None not in rules, rules[None]


@pytest.mark.parametrize("variant", ["avx2", "avx512"])
def test_odd_shapes(variant):
    """Shapes that do not divide the tiles: M=1 rows, N=1000 and N=3 outputs, K=50; N=96
    and N=144 take the shared 48-wide weight panels (AVX2 in 24-column halves, AVX-512
    whole), N=80 16-wide ones; each variant's tiles on its own code."""
    import dataclasses

    import torch
    from tvm.relax.frontend.torch import from_exported_program

    from conftest import variant_target

    from builder.compiler.schedules.cpu import params_from_env

    target = variant_target(variant)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(50, 1000)
            self.b = torch.nn.Linear(1000, 3)
            self.c = torch.nn.Conv2d(3, 24, 5, stride=3, padding=1)
            self.d = torch.nn.Linear(50, 96)
            # 14x8 tiles for a stride-1 3x3 on a 14-wide map, 7x8 for a 1x1 on a 7-wide one
            self.e = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.f = torch.nn.Conv2d(8, 16, 1, stride=2)
            self.g = torch.nn.Linear(50, 144)
            self.h = torch.nn.Linear(144, 80)

        def forward(self, x, img, fmap, rows):
            return (self.b(torch.relu(self.a(x))), torch.relu(self.c(img)), torch.nn.functional.gelu(self.d(x)),
                    self.e(fmap), self.f(fmap), self.h(torch.relu(self.g(rows))))

    ep = torch.export.export(Odd().eval(), (torch.randn(1, 50), torch.randn(1, 3, 17, 19), torch.randn(1, 8, 14, 14),
                                            torch.randn(16, 50)))
    # direct convs here (the 3x3 and 1x1 would go Winograd and packed): the tiles are tested
    params = dataclasses.replace(params_from_env(variant), winograd=False, packed_conv=False)
    report = _check(from_exported_program(ep), params=params, target=target)
    assert len(_by_rule(report).get("EdgebundleCPUContraction", [])) >= 7, report


def test_panels_and_tiles_of_each_variant():
    """Variants pack a weight alike (the panel depends on N only) and read it with their own
    tiles: whole panels or equal parts of one, never a width that straddles two."""
    from builder.compiler.schedules.cpu import _panel_and_tile, params_from_env

    def both(n):
        return [_panel_and_tile(n, p.dense_panel, p.nr, p.vector)
                for p in (params_from_env("avx2"), params_from_env("avx512"))]

    assert both(768) == [(48, 24), (48, 48)]  # BERT-base's hidden size
    assert both(3072) == [(48, 24), (48, 48)]
    assert both(96) == [(48, 24), (48, 48)]
    assert both(80) == [(16, 16), (16, 16)]
    assert both(1000) == [(8, 8), (8, 8)]  # ResNet's classifier
    for n in (96, 144, 384, 768, 1000, 1536, 80, 40):
        for panel, tile in both(n):
            assert n % panel == 0 and n % tile == 0 and (panel % tile == 0 or tile % panel == 0), (n, panel, tile)


def test_conv_padding_stays_out_of_the_inner_loop():
    """A 3x3 conv's zero padding is its own parallel pass: inlined, its bounds tests sat in
    the innermost loop (ResNet50's 3x3 convs ran 20-25% slower). A 1x1 conv's zero-size pad
    (a plain copy in topi) is inlined instead of copying the input."""
    import torch
    import tvm
    from tvm import tirx
    from tvm.relax.frontend.torch import from_exported_program

    from builder.tools.kernels import fused_module
    from builder.compiler.schedules.cpu import contraction_rule, CpuParams

    target = tvm.target.Target(TARGETS["x86_64"])
    for k, padded in ((3, True), (1, False)):
        # a symbolic batch, as our exports have: the pad test must not need static shapes
        ep = torch.export.export(torch.nn.Conv2d(8, 16, k, padding=k // 2).eval(), (torch.randn(2, 8, 14, 14),),
                                 dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},))
        fused = fused_module(from_exported_program(ep), target, CpuParams(winograd=False, packed_conv=False))
        [func] = [f for g, f in fused.functions.items() if isinstance(f, tirx.PrimFunc) and "conv2d" in g.name_hint]
        with target:
            sch = contraction_rule(CpuParams()).apply(func, target, False)
        assert sch is not None
        text = sch.mod.script()
        update = text.split('T.sblock("conv2d_nhwc_update")')[1].split("T.sblock(")[0]
        assert "if_then_else" not in update, update
        assert ('T.sblock("pad_temp")' in text) is padded, text
        if padded:
            assert text.split('T.sblock("pad_temp")')[0].count("T.parallel") == 1, text


def test_winograd_and_packed_convs_match_pytorch():
    """Stride-1 3x3 convs compiled as Winograd F(2x2, 3x3) (and F(4x4, 3x3) on an 8x12 map),
    and 1x1 and strided convs as packed-input GEMMs, against PyTorch: odd and even map sizes (partial 2x2 tiles, tile and
    pixel counts padded to the GEMM's rows), non-square maps, 3 input channels, 8/16/24
    output channels (8- and 16-wide weight panels), a strided 1x1, a padded strided 5x5, a
    batch of 2 for the symbolic batch, with BatchNorm+ReLU and a residual add fused after."""
    import numpy as np
    import torch
    import tvm
    from tvm import relax, tirx
    from tvm.relax.frontend.torch import from_exported_program

    from builder.compiler.schedules.cpu import CpuParams, cpu_pipeline
    from builder.compiler.schedules.gemm import tile_rows

    assert [tile_rows(t) for t in (16, 49, 196, 784)] == [4, 5, 6, 6]

    class Convs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
            self.b = torch.nn.Conv2d(16, 24, 3, padding=1, bias=False)
            self.c = torch.nn.Conv2d(24, 8, 3, padding=1)
            self.d = torch.nn.Sequential(torch.nn.Conv2d(8, 32, 1), torch.nn.BatchNorm2d(32))
            self.e = torch.nn.Conv2d(16, 32, 1, stride=2, bias=False)
            self.f = torch.nn.Conv2d(32, 24, 1)
            self.g = torch.nn.Conv2d(16, 16, 5, stride=2, padding=2)  # strided, padded

        def forward(self, x):
            y = self.a(x)
            z = self.c(self.b(y))
            r = torch.relu(self.d(z) + self.e(y).repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :z.shape[2], :z.shape[3]])
            return y, z, self.f(r), self.g(y)

    torch.manual_seed(0)
    model = Convs().eval()
    with torch.no_grad():
        for bn in (model.a[1], model.d[1]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    target = tvm.target.Target(TARGETS["x86_64"])
    batch = torch.export.Dim("batch", min=1, max=8)
    for h, w, f4 in ((7, 9, 0), (14, 14, 0), (5, 12, 0), (8, 12, 8)):
        x = torch.randn(2, 3, h, w)
        ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
        seen, tiles = [], set()

        @tvm.transform.module_pass(opt_level=0, name="Seen")
        def spy(mod, _ctx):
            for g, f in mod.functions.items():
                if isinstance(f, tirx.PrimFunc):
                    seen.append(g.name_hint)
                    # the transformed weights' leading extent: m + 2 for F(m x m, 3x3)
                    if "winograd" in g.name_hint:
                        weights = r"T\.Buffer\(\(T\.int64\((\d+)\), T\.int64\(\1\)(?:, T\.int64\(\d+\)){3}\)"
                        tiles.update(int(a) for a in re.findall(weights, f.script()))
            return mod

        params = CpuParams(winograd_f4_min_width=f4)
        ex = tvm.compile(from_exported_program(ep), target=target,
                         relax_pipeline=tvm.transform.Sequential([cpu_pipeline(target, params), spy]))
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
        with torch.no_grad():
            want = model(x)
        assert sum("winograd" in n for n in seen) == 3, seen
        assert tiles == ({6} if f4 else {4}), (h, w, tiles)
        assert sum("conv2d_packed" in n for n in seen) == 4, seen
        for g, r in zip(got, want):
            r = r.numpy()
            assert np.abs(g.numpy() - r).max() <= 1e-5 * max(1.0, np.abs(r).max()), (h, w)


def test_conv_rules_take_branching_epilogues():
    """SiLU and decomposed GELU read the conv's value twice: the epilogue is a branching chain.
    The Winograd and packed-conv rules still take their kernels (the contraction rule must
    not: its per-tile epilogue raced on their flattened pixels), matching the unscheduled
    kernels with 2 threads."""
    import torch
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    from builder.tools.kernels import check_kernels

    target = tvm.target.Target(TARGETS["x86_64"])
    expect = {(1, 1): "EdgebundleCPUPackedConv", (3, 2): "EdgebundleCPUPackedConv", (3, 1): "EdgebundleCPUWinograd"}
    for act in (torch.nn.SiLU(), torch.nn.GELU()):
        for (k, s), rule in expect.items():
            m = torch.nn.Sequential(torch.nn.Conv2d(16, 32, k, s, k // 2), act).eval()
            ep = torch.export.export(m, (torch.randn(1, 16, 14, 14),))
            report = [r for r in check_kernels(from_exported_program(ep), target) if "conv2d" in r["kernel"]]
            assert [r["rule"] for r in report] == [rule], (act, k, s, report)
            assert report[0]["max_rel_diff"] <= 1e-5, (act, k, s, report)
