import torch

from trainer.finetune import encoder_gradient_norms
from trainer.vit import ViTEncoder


def test_encoder_gradient_norms_match_a_plain_backward():
    torch.manual_seed(0)
    encoder = ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    tokens = encoder(x)
    pose_term = tokens[:, 1:].pow(2).mean()
    ar_term = 3.0 * tokens[:, 0].sum()
    norms = encoder_gradient_norms(encoder, pose_term, ar_term)
    for term, key in ((pose_term, "grad_norm_pose"), (ar_term, "grad_norm_ar")):
        encoder.zero_grad()
        term.backward(retain_graph=True)
        expected = torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]).norm()
        torch.testing.assert_close(norms[key], expected)
    assert -1.0 <= norms["grad_cosine_pose_ar"] <= 1.0
    same = encoder_gradient_norms(encoder, pose_term, 2.0 * pose_term)
    torch.testing.assert_close(same["grad_cosine_pose_ar"], torch.tensor(1.0))
    torch.testing.assert_close(same["grad_norm_ar"], 2.0 * same["grad_norm_pose"])
