"""Plain ``nn.Module`` building blocks: backbones, heads and their construction."""
