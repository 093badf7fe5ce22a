#include "MegaLiveTextureLibrary.h"

#include "Engine/Texture2D.h"
#include "HAL/UnrealMemory.h"
#include "Modules/ModuleManager.h"

IMPLEMENT_MODULE(FDefaultModuleImpl, MegaLiveTexture)

namespace
{
constexpr int32 MaxLiveTextureSize = 8192;
constexpr uint32 BytesPerPixel = 4; // RGBA8
}

UTexture2D* UMegaLiveTextureLibrary::CreateLiveTexture(int32 Width, int32 Height)
{
	if (Width < 1 || Height < 1 || Width > MaxLiveTextureSize || Height > MaxLiveTextureSize)
	{
		return nullptr;
	}
	UTexture2D* Texture = UTexture2D::CreateTransient(Width, Height, PF_R8G8B8A8);
	if (Texture == nullptr)
	{
		return nullptr;
	}
	Texture->SRGB = true;                                   // the server sends display-ready sRGB pixels
	Texture->CompressionSettings = TC_VectorDisplacementmap; // keep 8-bit RGBA, never block-compress
#if WITH_EDITORONLY_DATA
	Texture->MipGenSettings = TMGS_NoMipmaps;                // one mip: UpdateLiveTexture writes mip 0 only
#endif
	Texture->NeverStream = true;
	Texture->UpdateResource(); // once: creates the RHI resource that UpdateTextureRegions writes into
	return Texture;
}

bool UMegaLiveTextureLibrary::UpdateLiveTexture(UTexture2D* Texture, const TArray<uint8>& Pixels)
{
	if (!IsValid(Texture) || Texture->GetResource() == nullptr)
	{
		return false;
	}
	const int32 Width = Texture->GetSizeX();
	const int32 Height = Texture->GetSizeY();
	const int64 ByteCount = int64(Width) * int64(Height) * BytesPerPixel;
	if (Pixels.Num() != ByteCount)
	{
		return false;
	}
	// The render thread reads the pixels later, after this call (and the Python bytes) are gone:
	// hand it a heap copy and a heap region, both freed by the cleanup callback on the render thread.
	uint8* PixelCopy = static_cast<uint8*>(FMemory::Malloc(ByteCount));
	FMemory::Memcpy(PixelCopy, Pixels.GetData(), ByteCount);
	FUpdateTextureRegion2D* Region = new FUpdateTextureRegion2D(0, 0, 0, 0, Width, Height);
	Texture->UpdateTextureRegions(
		0, 1, Region, /*SrcPitch=*/Width * BytesPerPixel, /*SrcBpp=*/BytesPerPixel, PixelCopy,
		[](uint8* SrcData, const FUpdateTextureRegion2D* Regions)
		{
			FMemory::Free(SrcData);
			delete Regions;
		});
	return true;
}
