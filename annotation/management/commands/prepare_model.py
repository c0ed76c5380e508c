from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Convert the offline SmolLM2 model from its GGUF file into the safetensors cache (once)."

    def handle(self, *args, **options):
        from training.ml.models import default_model_dir

        path = default_model_dir(settings.MODEL_CACHE_DIR)
        self.stdout.write(self.style.SUCCESS(f"Offline model ready at {path}"))
