"""nytorch's documentation examples (particle operations, ParamConfig, ParamProduct,
ParticleModule) run on the compat layer, with only the import line changed."""

import gc

import pytest
import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.compat as nyto
from nytorch_func.compat.module import ParamProduct
from nytorch_func.compat.mtype import ParamConfig, ParamType
from nytorch_func.compat.particle_module import GetNytoModule, ParticleModule, PMProduct


class NytoLinear(nyto.NytoModule):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(w)
        self.bias = torch.nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x + self.bias


def test_public_names():
    assert nyto.NytoModule is nf.NytoModule
    for name in ("NytoModule", "ParamProduct", "ParamConfig", "ParamType", "ParticleModule",
                 "PMProduct", "GetNytoModule"):
        assert hasattr(nyto, name)
    assert nyto.module.ParamProduct is ParamProduct and nyto.mtype.ParamType is nn.Parameter
    assert nyto.particle_module.PMProduct is PMProduct


# -- particle_operation.rst ---------------------------------------------------------------------

def test_operations_with_numbers():
    net = NytoLinear(torch.Tensor([2.]), torch.Tensor([1.]))
    new_net = net + 10
    assert torch.equal(net.weight, torch.tensor([2.])) and torch.equal(net.bias, torch.tensor([1.]))
    assert torch.equal(new_net.weight, torch.tensor([12.]))
    assert torch.equal(new_net.bias, torch.tensor([11.]))
    assert isinstance(new_net.weight, nn.Parameter) and new_net.weight.requires_grad
    w = torch.tensor([2.])
    cases = {
        "pos": (+net, w), "neg": (-net, -w), "pow": (net ** 2, w ** 2), "add": (net + 2, w + 2),
        "sub": (net - 2, w - 2), "mul": (net * 2, w * 2), "truediv": (net / 2, w / 2),
        "rpow": (2 ** net, 2 ** w), "radd": (2 + net, 2 + w), "rsub": (2 - net, 2 - w),
        "rmul": (2 * net, 2 * w), "rtruediv": (2 / net, 2 / w),
    }
    for name, (out, expected) in cases.items():
        assert type(out) is NytoLinear, name
        assert out._version_kernel is net._version_kernel, name
        assert torch.allclose(out.weight, expected), name
    assert (+net).weight is not net.weight


def test_inplace_operators_keep_the_module():
    net = NytoLinear(torch.Tensor([2.]), torch.Tensor([1.]))
    same, weight = net, net.weight
    net **= 2
    net += 2
    net -= 1
    net *= 3
    net /= 5
    assert net is same and net.weight is weight
    assert torch.allclose(net.weight, torch.tensor([((2. ** 2 + 2 - 1) * 3) / 5]))
    other = net.clone()
    net += other
    net **= other
    assert net.weight is weight


def test_operations_between_particles():
    net = NytoLinear(torch.Tensor([2.]), torch.Tensor([1.]))
    new_net = net + net
    assert torch.equal(new_net.weight, torch.tensor([4.]))
    assert torch.equal(new_net.bias, torch.tensor([2.]))
    assert torch.equal((net ** net).weight, torch.tensor([4.]))
    assert torch.equal((net - net).weight, torch.tensor([0.]))
    assert torch.equal((net * net).weight, torch.tensor([4.]))
    assert torch.equal((net / net).weight, torch.tensor([1.]))


def test_species_mismatch_is_a_typed_error():
    net1 = NytoLinear(torch.Tensor([1.]), torch.Tensor([2.]))
    net2 = NytoLinear(torch.Tensor([3.]), torch.Tensor([4.]))
    net3 = net1 + 10
    with pytest.raises(nf.SpeciesMismatchError, match="different species"):
        net1 + net2
    assert isinstance(net1 + net3, NytoLinear)
    net3.load_state_dict(net2.state_dict())
    assert torch.equal((net1 + net3).weight, torch.tensor([4.]))


def test_clone_detach_clone_from_randn():
    net = NytoLinear(torch.Tensor([1.]), torch.Tensor([2.]))
    net_clone = net.clone()
    assert net.weight is not net_clone.weight and net.bias is not net_clone.bias
    assert torch.equal(net.weight, net_clone.weight) and torch.equal(net.bias, net_clone.bias)
    assert isinstance(net + net_clone, NytoLinear)

    net_detach = net.detach()
    assert net.weight is net_detach.weight and net.bias is net_detach.bias
    with pytest.raises(nf.SpeciesMismatchError):
        net + net_detach

    net2 = NytoLinear(torch.Tensor([3.]), torch.Tensor([4.]))
    net3 = net.clone_from(net2)
    assert net3._version_kernel is net._version_kernel
    assert torch.equal(net3.weight, net2.weight) and net3.weight is not net2.weight

    net_randn = net.randn()
    assert net_randn._version_kernel is net._version_kernel
    assert not torch.equal(net_randn.weight, net.weight)
    assert isinstance(net + net_randn, NytoLinear)


class Layer(nyto.NytoModule):
    def __init__(self, in_size, out_size):
        super().__init__()
        self.lin = nn.Linear(in_size, out_size)

    def forward(self, x):
        return self.lin(x)


class ResLayer(nyto.NytoModule):
    def __init__(self, in_size, out_size):
        super().__init__()
        self.sub_moudle = Layer(in_size, out_size)

    def forward(self, x):
        return self.sub_moudle(x) + x


def test_particle_operation_on_submodules():
    root_module = ResLayer(12, 2)
    sub_moudle = root_module.sub_moudle
    new_root_module = root_module + 10
    new_sub_moudle = sub_moudle + 10
    assert type(new_root_module) is ResLayer and type(new_sub_moudle) is Layer
    assert new_root_module.sub_moudle is not new_sub_moudle
    assert torch.equal(new_sub_moudle.lin.weight, sub_moudle.lin.weight + 10)
    assert new_sub_moudle(torch.ones(1, 12)).shape == (1, 2)
    # the particle of a submodule is its root's particle: one kernel for all of it
    assert root_module._particle_kernel is sub_moudle._particle_kernel
    assert root_module._particle_kernel is not new_root_module._particle_kernel
    assert new_root_module.sub_moudle._particle_kernel is new_root_module._particle_kernel


# -- ParamConfig.rst ----------------------------------------------------------------------------

class Linear(nyto.NytoModule):
    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.Tensor([w]))
        self.bias = torch.nn.Parameter(torch.Tensor([b]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x + self.bias


class DNN(nyto.NytoModule):
    def __init__(self, w0: float, b0: float, w1: float, b1: float) -> None:
        super().__init__()
        self.layer0 = Linear(w0, b0)
        self.layer1 = Linear(w1, b1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.layer0(x))


def _values(net):
    return [(n, p.item()) for n, p in net.named_parameters()]


@pytest.mark.parametrize("how", ["submodule", "name"])
def test_set_param_config_operational(how):
    net = DNN(1., 2., 3., 4.)
    if how == "submodule":
        net.layer0.set_param_config(operational=False)
    else:
        net.set_param_config(operational=False, name="layer0")
    new_net = 2 * net
    assert _values(net) == [("layer0.weight", 1.), ("layer0.bias", 2.), ("layer1.weight", 3.),
                            ("layer1.bias", 4.)]
    assert _values(new_net) == [("layer0.weight", 1.), ("layer0.bias", 2.), ("layer1.weight", 6.),
                                ("layer1.bias", 8.)]


def test_set_param_config_clone():
    net = DNN(1., 2., 3., 4.)
    net.layer0.set_param_config(operational=False)
    net.layer0.set_param_config(clone=True)
    new_net = 2 * net
    assert net.layer0.weight is not new_net.layer0.weight
    assert net.layer0.bias is not new_net.layer0.bias
    net.layer0.set_param_config(clone=False)
    new_net = 2 * net
    assert net.layer0.weight is new_net.layer0.weight
    assert net.layer0.bias is new_net.layer0.bias


def test_apply_param_config(capsys):
    def print_config(pid, config):
        print(f"{pid=} {config=}")

    def set_operational_false(pid, config):
        config.operational = False

    for how in ("submodule", "name"):
        net = DNN(1., 2., 3., 4.)
        if how == "submodule":
            net.layer0.apply_param_config(set_operational_false)
        else:
            net.apply_param_config(set_operational_false, name="layer0")
        net.layer0.apply_param_config(print_config)
        assert capsys.readouterr().out == (
            "pid=0 config=ParamConfig(operational=False, clone=True)\n"
            "pid=1 config=ParamConfig(operational=False, clone=True)\n")
        assert isinstance(net.to_particle().config("layer1.bias"), nf.ParamConfig)
        assert net.to_particle().config("layer1.bias").operational


class DNN2(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.layer0 = nn.Linear(6, 12)
        self.layer1 = nn.Linear(12, 2)

    def forward(self, x):
        return self.layer1(self.layer0(x))


def test_get_param_id():
    net = DNN2()
    assert net.get_param_id(net.layer0.weight) == 0
    assert net.get_param_id(net.layer0.bias) == 1
    assert net.get_param_id(net.layer1.weight) == 2
    net2 = net.randn()
    assert net.get_param_id(net.layer0.weight) == net2.get_param_id(net2.layer0.weight)
    assert net.get_param_id(net.layer0.bias) == net2.get_param_id(net2.layer0.bias)
    with pytest.raises(nf.SchemaError, match="not a parameter"):
        net.get_param_id(net2.layer0.weight)


class CNN(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels=1, out_channels=4, kernel_size=5,
                                             stride=1, padding=2),
                                   nn.ReLU(), nn.MaxPool2d(kernel_size=2))
        self.conv2 = nn.Sequential(nn.Conv2d(4, 8, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
        self.output_layer = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x)
        x = x.view(x.size(0), -1)
        return self.output_layer(x), x


def _mark_weights(net):
    weight_set = {net.get_param_id(sub_param) for name, sub_param in net.named_parameters()
                  if name.split('.')[-1] == 'weight'}

    def making_weight_and_bias(pid, config: ParamConfig) -> None:
        config.is_weight = pid in weight_set

    net.apply_param_config(making_weight_and_bias)


def test_marking_weight_and_bias(capsys):
    net = CNN()
    before = net._version_kernel
    _mark_weights(net)
    assert net._version_kernel is not before  # one configure event
    assert before.next is net._version_kernel
    net.apply_param_config(lambda pid, config: print(f"{pid=} {config=}"))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"pid={i} config=ParamConfig(operational=True, clone=True, "
                     f"is_weight={i % 2 == 0})" for i in range(6)]


# -- ParamProduct.rst ---------------------------------------------------------------------------

def test_product_round_trip_and_builtins():
    net = Linear(2., 1.)
    product: ParamProduct = net.product()
    new_net: Linear = product.module()
    assert type(new_net) is Linear and torch.equal(new_net.weight, net.weight)
    assert new_net.weight is net.weight and new_net is not net  # the product's very tensors
    net.product_(2 * product)
    assert torch.equal(net.weight, torch.tensor([4.]))
    product = net.product()
    for out, expected in [(+product, 4.), (-product, -4.), (product ** 2, 16.),
                          (product ** product, 256.), (product + 2, 6.), (product + product, 8.),
                          (product - 2, 2.), (product - product, 0.), (product * 2, 8.),
                          (product * product, 16.), (product / 2, 2.), (product / product, 1.),
                          (2 * product + 5, 13.)]:
        assert isinstance(out, ParamProduct)
        assert out.module().weight.item() == expected
    assert product.randn().module()._version_kernel is net._version_kernel
    assert product.clone().module().weight.item() == 4.
    assert list(product.params) == [0, 1]


def test_unary_operator_with_and_without_config():
    def my_unary_operation(param: ParamType, config: ParamConfig) -> ParamType:
        return torch.nn.Parameter(2 * param + 5)

    net = Linear(2., 1.)
    new_net = net.product().unary_operator(my_unary_operation).module()
    assert [p.item() for p in net.parameters()] == [2., 1.]
    assert [p.item() for p in new_net.parameters()] == [9., 7.]
    assert all(p.requires_grad for p in new_net.parameters())

    def my_unary_operation2(param, config):
        if config.operational:
            return torch.nn.Parameter(2 * param + 5)
        elif config.clone:
            return torch.nn.Parameter(param.clone())
        return param

    net = Linear(2., 1.)
    net.set_param_config(operational=False, name='bias')
    new_net = net.product().unary_operator(my_unary_operation2).module()
    assert [p.item() for p in new_net.parameters()] == [9., 1.]


def test_unary_operator_reads_custom_attributes():
    net = CNN()
    _mark_weights(net)

    def randn_weight(param, config):
        if config.is_weight:
            return nn.Parameter(torch.randn_like(param))
        return nn.Parameter(torch.zeros_like(param))

    new_net = net.product().unary_operator(randn_weight).module()
    assert torch.equal(new_net.output_layer.bias, torch.zeros(10))
    assert not torch.equal(new_net.output_layer.weight, net.output_layer.weight)
    out, _ = new_net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_binary_operator():
    net1 = Linear(10, 5)
    net2 = net1.clone_from(Linear(3, 2))

    def my_sub_operator(left, right, config):
        return torch.nn.Parameter(left - right)

    net3 = net1.product().binary_operator(net2.product(), my_sub_operator).module()
    assert [(n, p.item()) for n, p in net3.named_parameters()] == [("weight", 7.), ("bias", 3.)]
    with pytest.raises(nf.SpeciesMismatchError):
        net1.product().binary_operator(Linear(1, 1).product(), my_sub_operator)


# -- ParticleModule.rst -------------------------------------------------------------------------

class MyModel(nyto.NytoModule):
    def __init__(self, in_feat: int, h_size: int, out_feat: int):
        super().__init__()
        self.layer1 = nn.Linear(in_feat, h_size)
        self.layer2 = nn.Linear(h_size, out_feat)

    def forward(self, inpts):
        return self.layer2(torch.relu(self.layer1(inpts)))


def test_particle_module_usage_and_operations():
    root = MyModel(4, 12, 3)
    net = ParticleModule(root)
    assert net(torch.randn(2, 4)).shape == (2, 3)
    assert net.root_module is root
    assert len(list(net.parameters())) == 4
    for out in (net + 1, 2 * net, net - net, -net, net.clone(), net.randn()):
        assert isinstance(out, ParticleModule)
        assert out.root_module._version_kernel is root._version_kernel
    assert torch.equal((net + 1).root_module.layer1.bias, root.layer1.bias + 1)

    product1 = net.product()
    assert isinstance(product1, PMProduct) and isinstance(product1.product, ParamProduct)
    assert isinstance(product1.module(), ParticleModule)
    product2 = product1 + 1
    product3 = 2 * product2
    product4 = product3.unary_operator(lambda param, config: 2 * param + 10)
    product5 = product4.binary_operator(product3, lambda param1, param2, config: param1 + param2)
    product6 = product5.randn()
    w = root.layer1.weight
    expected = (2 * (2 * (w + 1)) + 10) + 2 * (w + 1)
    assert torch.allclose(product5.module().root_module.layer1.weight, expected)
    assert isinstance(product6.module(), ParticleModule)


def test_particle_module_locks_structural_edits():
    model = ParticleModule(MyModel(4, 12, 3))
    model_clone = model.clone()
    with pytest.raises(nf.VersionError, match="locked"):
        model.root_module.data_embed = nn.Embedding(30, 8)
    assert not hasattr(model.root_module, "data_embed")

    model.restore_kernel_ref()
    model.root_module.data_embed = nn.Embedding(30, 8)
    model.clear_kernel_ref()
    model_clone.restore_kernel_ref()
    model_clone.root_module.touch()
    model_clone.clear_kernel_ref()
    assert model_clone.root_module.data_embed.num_embeddings == 30

    third = model.clone()
    with GetNytoModule(model) as my_nyto_module:
        my_nyto_module.data_pos = nn.Embedding(10, 8)
    with pytest.raises(nf.VersionError):
        model.root_module.data_pos2 = nn.Embedding(10, 8)
    with GetNytoModule(third) as third_root:
        third_root.touch()
    assert hasattr(third.root_module, "data_pos")


def test_particle_module_loop_frees_everything_without_the_cycle_collector():
    freed = []

    class Tracked(MyModel):
        pass

    gc.collect()
    gc.disable()
    try:
        net = ParticleModule(Tracked(4, 8, 2))
        import weakref

        refs = []
        for _ in range(10):
            net = 0.5 * net + 10
            refs.append(weakref.ref(net.root_module, lambda r: freed.append(r)))
        del net
        assert all(r() is None for r in refs)
        assert gc.collect() == 0
    finally:
        gc.enable()
