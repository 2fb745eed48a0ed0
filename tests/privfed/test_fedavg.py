import torch

from privfed.federation.aggregation import PlainFedAvg, client_weights, fedavg
from privfed.federation.client import ClientUpdate


def test_fedavg_equals_hand_computed_weighted_mean():
    a = ClientUpdate(client_id=0, delta=torch.tensor([1.0, 2.0, -3.0]), num_examples=10, loss=0.0, steps=1)
    b = ClientUpdate(client_id=4, delta=torch.tensor([4.0, 0.0, 1.0]), num_examples=30, loss=0.0, steps=1)
    # (10*[1,2,-3] + 30*[4,0,1]) / 40 = [130, 20, 0] / 40
    expected = torch.tensor([3.25, 0.5, 0.0])
    assert torch.allclose(fedavg([a, b]), expected)
    res = PlainFedAvg().aggregate([a, b], round_index=1)
    assert torch.allclose(res.mean_delta, expected) and res.contributors == [0, 4]
    assert client_weights([a, b]) == {0: 0.25, 4: 0.75}


def test_fedavg_on_a_toy_model_matches_manual_average():
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, 2) for _ in range(3)]
    base = torch.nn.Linear(3, 2)
    vec = torch.nn.utils.parameters_to_vector
    ups = [ClientUpdate(client_id=i, delta=(vec(m.parameters()) - vec(base.parameters())).detach(),
                        num_examples=n, loss=0.0, steps=1) for i, (m, n) in enumerate(zip(models, (1, 2, 5)))]
    new = vec(base.parameters()).detach() + fedavg(ups)
    manual_w = (models[0].weight * 1 + models[1].weight * 2 + models[2].weight * 5) / 8
    manual_b = (models[0].bias * 1 + models[1].bias * 2 + models[2].bias * 5) / 8
    assert torch.allclose(new, torch.cat([manual_w.flatten(), manual_b]).detach(), atol=1e-6)
